from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_GENERATIVE
from testsupport.downstream_models import teacher_forced_log_probability

from lmindexer.downstream.fusion import reciprocal_rank_fusion, score_fusion
from lmindexer.downstream.generative import RECOMMENDATION_FUSIONS, GenerativeModel
from lmindexer.downstream.prior import TEMPERATURE, DensePrior
from lmindexer.downstream.trie import IdTrie
from lmindexer.errors import ConfigError, SnapshotError

SIZES = (3, 4, 3)
IDS = {
    "a": (0, 0, 0), "b": (0, 0, 1), "c": (0, 2, 0), "d": (1, 3, 0),
    "e": (2, 1, 0), "f": (2, 1, 1), "g": (2, 3, 0),
}  # fmt: skip


def _prior_and_trie(seed: int = 0) -> tuple[DensePrior, IdTrie, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    vectors = {item_id: torch.randn(8, generator=generator) for item_id in IDS}
    prior = DensePrior(SIZES)
    prior.set_vectors(list(vectors), torch.stack(list(vectors.values())))
    return prior, IdTrie.build(len(SIZES), IDS.items()), vectors


def _log_probability(prior: DensePrior, trie: IdTrie, query: torch.Tensor, tokens: tuple[int, ...]) -> float:
    """log P(ID) under the prior alone: the sum over positions of the log-softmax of the prior's scores."""
    total = 0.0
    for position in range(len(tokens)):
        prefix = torch.tensor([tokens[:position]], dtype=torch.long).reshape(1, position)
        scores = prior.scores(trie, position, query.unsqueeze(0), prefix)
        total += torch.log_softmax(scores, dim=-1)[0, tokens[position]].item()
    return total


def test_the_prior_alone_is_the_softmax_over_all_items_of_their_scaled_cosines():
    """What makes an untrained model rank like dense retrieval: the product over positions of the prior's softmaxes
    is exactly the softmax over items of TEMPERATURE x cosine, whatever the tree."""
    prior, trie, vectors = _prior_and_trie()
    query = torch.randn(8, generator=torch.Generator().manual_seed(7))
    cosines = torch.stack([F.cosine_similarity(query, v, dim=0) for v in vectors.values()]) * TEMPERATURE
    expected = torch.log_softmax(cosines, dim=0)
    for (item_id, tokens), want in zip(IDS.items(), expected.tolist(), strict=True):
        assert _log_probability(prior, trie, query, tokens) == pytest.approx(want, abs=1e-4), item_id


def test_a_token_that_continues_no_id_scores_minus_infinity():
    prior, trie, _ = _prior_and_trie()
    query = torch.randn(2, 8)
    first = prior.scores(trie, 0, query, torch.zeros(2, 0, dtype=torch.long))
    assert torch.isfinite(first).all()  # all three first codes exist
    second = prior.scores(trie, 1, query, torch.tensor([[0], [1]]))
    assert torch.isfinite(second[0]).tolist() == [True, False, True, False]
    assert torch.isfinite(second[1]).tolist() == [False, False, False, True]
    unknown = prior.scores(trie, 2, query[:1], torch.tensor([[1, 0]]))  # (1, 0) is no prefix of any ID
    assert torch.isinf(unknown).all()


def test_an_item_without_an_embedding_takes_its_nearest_embedded_ancestors_centroid():
    prior, trie, vectors = _prior_and_trie()
    trie.insert("h", (2, 1, 2))  # indexed later, without its text
    prior.invalidate()
    query = torch.randn(8, generator=torch.Generator().manual_seed(3))
    leaf = prior.scores(trie, 2, query.unsqueeze(0), torch.tensor([[2, 1]]))[0]
    centroid = F.normalize(F.normalize(vectors["e"], dim=0) + F.normalize(vectors["f"], dim=0), dim=0)
    assert leaf[2].item() == pytest.approx(TEMPERATURE * F.cosine_similarity(query, centroid, dim=0).item(), abs=1e-4)
    assert math.isfinite(_log_probability(prior, trie, query, (2, 1, 2)))


def test_the_prior_is_rebuilt_when_the_trie_changes():
    prior, trie, _ = _prior_and_trie()
    query = torch.randn(1, 8)
    before = prior.scores(trie, 0, query, torch.zeros(1, 0, dtype=torch.long))
    trie.remove("d")  # the only item under code 1
    prior.invalidate()
    after = prior.scores(trie, 0, query, torch.zeros(1, 0, dtype=torch.long))
    assert math.isfinite(before[0, 1].item()) and after[0, 1].item() == float("-inf")


def test_a_prior_needs_item_embeddings():
    prior = DensePrior(SIZES)
    with pytest.raises(ConfigError, match="no item embeddings"):
        prior.scores(IdTrie.build(3, IDS.items()), 0, torch.randn(1, 8), torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ConfigError, match="expected 2 embedding rows"):
        prior.set_vectors(["a", "b"], torch.randn(3, 8))


# -- in the generative model -------------------------------------------------------------------------------------

PRIOR_OPTIONS = {**TINY_GENERATIVE, "dense_prior": True, "prior_max_length": 32, "epochs": 2}


def test_with_a_silent_decoder_search_returns_the_items_nearest_to_the_query(rq_ids, item_texts, title_pairs):
    """The prior is wired into decoding: with the decoder's own scores scaled to nothing and a beam as wide as the
    catalogue, the search ranks exactly as cosine over the embedded items does."""
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**PRIOR_OPTIONS, "beam_size": 400, "inference_precision": "fp32"})
    model.embed_items(item_texts)
    with torch.no_grad():
        model.network.logit_scale.fill_(-30.0)
    queries = [query for query, _ in title_pairs[:5]]
    found = model.search(queries, k=10)
    ids = model.prior.item_ids()
    vectors = model.prior.vectors(ids)
    batch = model.network.backbone.tokenize(queries, model.config.max_length)
    with torch.no_grad():
        memory = model.network.encode(batch["input_ids"], batch["attention_mask"])
        summaries = model.network.source_summary(memory, batch["attention_mask"])
    cosines = summaries @ vectors.T
    for query, ranked in enumerate(found):
        want = [ids[i] for i in cosines[query].topk(10).indices.tolist()]
        assert [item_id for item_id, _ in ranked] == want


def test_training_with_the_prior_keeps_every_weight_finite_and_learns_its_weight(rq_ids, title_pairs, item_texts):
    """Scores off the trie are -inf; multiplied by the learned weight their gradient would be NaN."""
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, PRIOR_OPTIONS)
    stats = model.fit_retrieval(title_pairs[:100], item_texts)
    assert stats["embedded_items"] == len(item_texts)
    assert all(math.isfinite(loss) for loss in stats["epoch_loss"])
    assert all(torch.isfinite(parameter).all() for parameter in model.network.parameters())
    assert model.network.prior_weight.item() != 0.0


def test_a_saved_model_keeps_its_item_embeddings_and_ranks_the_same(rq_ids, title_pairs, item_texts, tmp_path):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, PRIOR_OPTIONS)
    model.fit_retrieval(title_pairs[:50], item_texts)
    queries = [query for query, _ in title_pairs[:20]]
    loaded = GenerativeModel.load(model.save(tmp_path / "model"))
    ids = model.prior.item_ids()
    assert loaded.prior.item_ids() == ids
    assert torch.equal(loaded.prior.vectors(ids), model.prior.vectors(ids))
    assert loaded.search(queries, k=5) == model.search(queries, k=5)


def test_a_saved_model_whose_item_embeddings_were_changed_is_refused(rq_ids, title_pairs, item_texts, tmp_path):
    from safetensors.torch import load_file, save_file

    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, PRIOR_OPTIONS)
    model.fit_retrieval(title_pairs[:50], item_texts)
    path = model.save(tmp_path / "model")
    tensors = load_file(str(path / "weights.safetensors"))
    tensors["dense_prior.item_vectors"][0] += 1.0
    save_file(tensors, str(path / "weights.safetensors"))
    with pytest.raises(SnapshotError):
        GenerativeModel.load(path)


def test_a_model_saved_before_the_prior_existed_loads_without_one_and_ranks_the_same(rq_ids, title_pairs, tmp_path):
    """The prior is on by default now; a model whose saved options do not name it was trained without it."""
    import json

    from lmindexer.downstream.generative import _EXPANDED, DOCUMENT
    from lmindexer.integrity import INTEGRITY_KEY, seal

    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "dense_prior": False})
    path = model.save(tmp_path / "model")
    document = json.loads((path / DOCUMENT).read_text())
    del document["config"]["dense_prior"], document["config"]["prior_max_length"], document[INTEGRITY_KEY]
    document[INTEGRITY_KEY] = seal(path, document, document_file=DOCUMENT, expand=_EXPANDED)
    (path / DOCUMENT).write_text(json.dumps(document))
    loaded = GenerativeModel.load(path)
    assert loaded.prior is None and loaded.network.prior_weight is None
    queries = [query for query, _ in title_pairs[:20]]
    assert loaded.search(queries, k=5) == model.search(queries, k=5)


def test_a_model_without_the_prior_has_no_item_embeddings_to_make(rq_ids, item_texts, movielens_small):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "dense_prior": False})
    assert model.prior is None and model.network.prior_weight is None
    with pytest.raises(ConfigError, match="no dense prior"):
        model.embed_items(item_texts)
    snapshot, table, _ = movielens_small
    options = {**PRIOR_OPTIONS, "task": "recommendation", "item_prior": False}
    recommender = GenerativeModel.create(table, snapshot, options)
    assert recommender.prior is None  # the dense prior reads a query's text; a recommender reads a history


def test_items_a_sync_adds_are_embedded_from_their_own_texts(wiki_sample_path, item_texts, tmp_path):
    """A synced retriever's new items get their own embeddings (the snapshot renders their catalogue texts), not
    their neighbours' centroid."""
    from types import SimpleNamespace

    from testsupport.downstream_models import RQ_OPTIONS, snapshot_and_ids

    from lmindexer.catalog import read_items
    from lmindexer.downstream import jobs

    snapshot, table = snapshot_and_ids("rq-kmeans", RQ_OPTIONS, wiki_sample_path, tmp_path)
    model = GenerativeModel.create(table, snapshot, PRIOR_OPTIONS)
    new = table.item_ids[:10]
    for item_id in new:
        model.remove(item_id)
    model.embed_items({i: t for i, t in item_texts.items() if i not in new})
    model.sync(table)
    assert all(item_id in model.trie and item_id not in model.prior for item_id in new)
    pointer = SimpleNamespace(catalog_uri=str(wiki_sample_path), snapshot_uri=str(tmp_path / "rq-kmeans" / "snapshot"))
    assert jobs._embed_new_items(model, pointer) == 10
    expected = GenerativeModel.create(table, snapshot, PRIOR_OPTIONS)
    catalogue = {item.item_id: item for item in read_items(wiki_sample_path)[0]}
    expected.embed_items(dict(zip(new, snapshot.texts([catalogue[i] for i in new]), strict=True)))
    assert torch.allclose(model.prior.vectors(new), expected.prior.vectors(new), atol=1e-6)
    assert jobs._embed_new_items(model, pointer) == 0  # nothing left to embed


def test_a_saved_model_carries_no_embedding_of_an_item_it_no_longer_returns(rq_ids, item_texts, tmp_path):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, PRIOR_OPTIONS)
    model.embed_items(item_texts)
    gone = table.item_ids[0]
    model.remove(gone)
    loaded = GenerativeModel.load(model.save(tmp_path / "model"))
    assert gone not in loaded.prior and len(loaded.prior) == len(item_texts) - 1


def test_training_with_the_prior_needs_the_items_texts(rq_ids, title_pairs):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**PRIOR_OPTIONS, "indexing_pairs": False})
    with pytest.raises(ConfigError, match="dense_prior is on, so the items' texts are needed"):
        model.fit_retrieval(title_pairs[:20])


# -- a recommender's item prior ------------------------------------------------------------------------------------

ITEM_PRIOR_OPTIONS = {
    **TINY_GENERATIVE, "task": "recommendation", "item_prior": True, "history_window": 8, "epochs": 3,
    "batch_size": 64, "prior_max_length": 32,
}  # fmt: skip


@pytest.fixture(scope="module")
def item_prior_recommender(movielens_small, movielens_subset_parts):
    snapshot, table, sequences = movielens_small
    texts = _movie_texts(snapshot, table, movielens_subset_parts)
    model = GenerativeModel.create(table, snapshot, ITEM_PRIOR_OPTIONS)
    # The vectors the training starts from: each item's text embedding.
    started = model._text_vectors([texts[i] for i in table.item_ids], progress=False)
    stats = model.fit_recommendation([s[:-1] for s in sequences], texts)
    return model, stats, dict(zip(table.item_ids, F.normalize(started, dim=-1), strict=True))


def _movie_texts(snapshot, table, parts) -> dict[str, str]:
    from lmindexer.catalog import read_items

    catalogue = {item.item_id: item for item in read_items(parts[3])[0]}
    return dict(zip(table.item_ids, snapshot.texts([catalogue[i] for i in table.item_ids]), strict=True))


def test_a_recommenders_item_prior_learns_vectors_that_rank_the_next_items_higher(
    item_prior_recommender, movielens_small
):
    """The items' vectors train with the model: scored against the trained history encoder's summaries, the learned
    vectors give the training histories' next items a higher log-probability (softmax over all items) than the
    text embeddings they started from."""
    _, _, sequences = movielens_small
    model, stats, started = item_prior_recommender
    assert stats["embedded_items"] == len(started)
    ids = model.prior.item_ids()
    learned = model.prior.vectors(ids)
    initial = torch.stack([started[i] for i in ids])
    assert not torch.allclose(learned, initial, atol=1e-3)
    histories = [s[:-2] for s in sequences if len(s) > 2]
    nexts = torch.tensor([ids.index(s[-2]) for s in sequences if len(s) > 2])
    with torch.no_grad():
        memory, mask = model._encode_histories(model._history_batch(histories))
        summaries = model.network.source_summary(memory, mask)

    def mean_log_probability(vectors: torch.Tensor) -> float:
        log_probs = torch.log_softmax(TEMPERATURE * summaries @ vectors.T, dim=-1)
        return log_probs[torch.arange(len(nexts)), nexts].mean().item()

    assert mean_log_probability(learned) > mean_log_probability(initial) + 0.2


def test_a_recommender_with_the_item_prior_decodes_exactly_and_keeps_its_vectors_through_save_and_load(
    item_prior_recommender, movielens_small, tmp_path, monkeypatch
):
    """Beam search scores each ID with the item prior as recomputing every position from scratch does; a saved
    model has the same vectors and recommendations; an item indexed later takes its prefix's centroid and can be
    recommended."""
    _, table, sequences = movielens_small
    model, _, _ = item_prior_recommender
    monkeypatch.setattr(model, "precision", "fp32")
    assert model.prior is not None
    histories = [s[:-1] for s in sequences[:8]]
    found = model.recommend(histories, k=model.config.beam_size)
    with torch.no_grad():
        memory, mask = model._encode_histories(model._history_batch(histories))
        for source, ranked in enumerate(found):
            for item_id, score in ranked[:5] + ranked[-2:]:
                exact = teacher_forced_log_probability(model, memory, mask, source, model.trie.tokens_of(item_id))
                assert score == pytest.approx(exact, abs=1e-4)
    loaded = GenerativeModel.load(model.save(tmp_path / "model"))
    loaded.use_precision("fp32")
    ids = model.prior.item_ids()
    assert loaded.prior.item_ids() == ids
    assert torch.equal(loaded.prior.vectors(ids), model.prior.vectors(ids))
    assert loaded.recommend(histories, k=10) == model.recommend(histories, k=10)
    item_id, sid = next(iter(table.sid_map().items()))
    loaded.remove(item_id)
    loaded.insert(item_id, sid)  # back under its ID, without its learned vector
    loaded.prior._vectors.pop(item_id)
    wide = loaded.recommend(histories, k=loaded.config.beam_size)
    assert all(math.isfinite(score) for ranked in wide for _, score in ranked)
    everything = len(loaded.trie)
    with torch.no_grad():
        memory, mask = loaded._encode_histories(loaded._history_batch(histories[:1]))
        ranked = loaded.network.beam_search(memory, mask, loaded.trie, everything, prior=loaded._prior())[0]
    assert item_id in {i for i, _ in ranked}


def test_an_interrupted_training_leaves_the_item_vectors_as_they_were():
    prior, trie, _ = _prior_and_trie()
    network = torch.nn.Linear(2, 2)
    before = prior.vectors(prior.item_ids())
    with pytest.raises(RuntimeError, match="stopped"), prior.learning(network, trie):
        assert "prior_items" in dict(network.named_parameters())
        with torch.no_grad():
            network.prior_items.add_(1.0)
        raise RuntimeError("stopped")
    assert "prior_items" not in dict(network.named_parameters())
    assert torch.equal(prior.vectors(prior.item_ids()), before)
    with prior.learning(network, trie), torch.no_grad():
        network.prior_items.mul_(-1.0)
    assert torch.allclose(prior.vectors(prior.item_ids()), -before, atol=1e-6)


def test_the_item_prior_is_a_recommenders_and_its_vectors_are_not_text_embeddings(
    rq_ids, item_texts, item_prior_recommender
):
    snapshot, table = rq_ids
    retriever = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "dense_prior": False, "item_prior": True})
    assert retriever.prior is None and retriever.network.prior_weight is None
    model, _, _ = item_prior_recommender
    with pytest.raises(ConfigError, match="no dense prior"):
        model.embed_items({item_id: "a text" for item_id in model.prior.item_ids()[:3]})


def test_a_recommender_saved_before_the_item_prior_existed_loads_without_one_and_ranks_the_same(
    movielens_small, tmp_path
):
    """The item prior is on by default; a recommender whose saved options do not name it was trained without it."""
    import json

    from lmindexer.downstream.generative import _EXPANDED, DOCUMENT
    from lmindexer.integrity import INTEGRITY_KEY, seal

    snapshot, table, sequences = movielens_small
    options = {**ITEM_PRIOR_OPTIONS, "item_prior": False}
    model = GenerativeModel.create(table, snapshot, options)
    path = model.save(tmp_path / "model")
    document = json.loads((path / DOCUMENT).read_text())
    del document["config"]["item_prior"], document[INTEGRITY_KEY]
    document[INTEGRITY_KEY] = seal(path, document, document_file=DOCUMENT, expand=_EXPANDED)
    (path / DOCUMENT).write_text(json.dumps(document))
    loaded = GenerativeModel.load(path)
    assert loaded.prior is None and loaded.network.prior_weight is None
    histories = [s[:-1] for s in sequences[:10]]
    assert loaded.recommend(histories, k=5) == model.recommend(histories, k=5)


def test_a_recommender_with_the_item_prior_resumes_from_its_checkpoint_to_the_same_vectors(
    movielens_small, movielens_subset_parts, tmp_path, monkeypatch
):
    """The learned item vectors are in the checkpoint with the weights: a training that crashed after a checkpoint
    resumes to exactly the vectors and weights of a training never interrupted."""
    from testsupport.retriever_state import one_torch_thread

    from lmindexer.downstream.model import GenerativeIdModel

    snapshot, table, sequences = movielens_small
    texts = _movie_texts(snapshot, table, movielens_subset_parts)
    # 60 users x 5 steps = 300 examples: 5 batches of 64 per epoch, 10 steps, a checkpoint every 2.
    options = {**ITEM_PRIOR_OPTIONS, "epochs": 2, "checkpoint_every": 2, "examples_per_history": 5}
    histories = [s[:-1] for s in sequences[:60]]

    def fit(checkpoint):
        model = GenerativeModel.create(table, snapshot, options)
        return model, model.fit_recommendation(histories, texts, checkpoint_dir=checkpoint)

    real_loss, calls = GenerativeIdModel.loss, {"n": 0}

    def crashing_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # step 5: the checkpoint of step 4 is on disk
            raise RuntimeError("worker lost")
        return real_loss(self, *args, **kwargs)

    with one_torch_thread():
        monkeypatch.setattr(GenerativeIdModel, "loss", crashing_loss)
        with pytest.raises(RuntimeError, match="worker lost"):
            fit(tmp_path / "checkpoint")
        monkeypatch.setattr(GenerativeIdModel, "loss", real_loss)
        resumed, stats = fit(tmp_path / "checkpoint")
        reference, reference_stats = fit(None)
    assert stats["resumed_at_step"] == 4 and reference_stats["resumed_at_step"] is None
    ids = reference.prior.item_ids()
    assert torch.equal(resumed.prior.vectors(ids), reference.prior.vectors(ids))
    expected = dict(reference.network.named_parameters())
    assert all(torch.equal(p.detach(), expected[n].detach()) for n, p in resumed.network.named_parameters())
    assert "prior_items" not in expected  # the vectors left the network when the training ended


def test_ranking_by_the_item_prior_alone_is_what_a_silent_decoders_widest_beam_returns(movielens_small):
    """The exhaustive two-tower ranking cross-checked against the beam search: with the decoder's own scores scaled
    to nothing, the prior at weight 1 and a beam as wide as the catalogue, the search returns the same items in the
    same order, its scores the prior's minus one log-normaliser per history; and neither returns a seen item when
    the history is left out."""
    snapshot, table, sequences = movielens_small
    options = {**TINY_GENERATIVE, "task": "recommendation", "beam_size": 400, "inference_precision": "fp32"}
    model = GenerativeModel.create(table, snapshot, options)
    assert len(model.trie) <= 400
    model._start_item_vectors(None, progress=False)  # the item prior's vectors (random directions), as training does
    with torch.no_grad():
        model.network.logit_scale.fill_(-30.0)
        model.network.prior_weight.zero_()  # exp(0): weight 1
    histories = [sequence[:-1] for sequence in sequences[:6]]
    for exclude_seen in (False, True):
        searched = model.recommend(histories, k=25, exclude_seen=exclude_seen)
        ranked = model.rank_by_item_prior(histories, k=25, exclude_seen=exclude_seen)
        for history, by_search, by_prior in zip(histories, searched, ranked, strict=True):
            assert [item_id for item_id, _ in by_prior] == [item_id for item_id, _ in by_search]
            offsets = [prior - search for (_, prior), (_, search) in zip(by_prior, by_search, strict=True)]
            assert max(offsets) - min(offsets) == pytest.approx(0.0, abs=1e-3)
            assert not exclude_seen or not set(history) & {item_id for item_id, _ in by_prior}
        if not exclude_seen:
            assert any(set(h) & {i for i, _ in r} for h, r in zip(histories, ranked, strict=True))


def test_ranking_by_the_item_prior_needs_a_recommender_that_has_one(rq_ids, movielens_small):
    snapshot, table = rq_ids
    with pytest.raises(ConfigError, match="retriever"):
        GenerativeModel.create(table, snapshot, TINY_GENERATIVE).rank_by_item_prior([["x"]])
    snapshot, table, sequences = movielens_small
    options = {**TINY_GENERATIVE, "task": "recommendation", "item_prior": False}
    with pytest.raises(ConfigError, match="no item prior"):
        GenerativeModel.create(table, snapshot, options).rank_by_item_prior([sequences[0]])


def test_the_fused_recommendation_is_the_fusion_of_the_beams_items_and_the_item_priors_top(movielens_small):
    """recommend_fused cross-checked against its parts: the beam's beam_size items and the prior's top beam_size,
    fused by the library's own functions; the fused top reaches items that the beam's own top k left out, and never
    a seen item when the history is left out."""
    snapshot, table, sequences = movielens_small
    options = {**TINY_GENERATIVE, "task": "recommendation", "beam_size": 20, "inference_precision": "fp32"}
    model = GenerativeModel.create(table, snapshot, options)
    model._start_item_vectors(None, progress=False)
    histories = [sequence[:-1] for sequence in sequences[:8]]
    reached_past_the_beam = False
    for exclude_seen in (False, True):
        beams = model.recommend(histories, k=20, exclude_seen=exclude_seen)
        priors = model.rank_by_item_prior(histories, k=20, exclude_seen=exclude_seen)
        expected = {
            "score": [score_fusion([b, p], k=10) for b, p in zip(beams, priors, strict=True)],
            "rrf": [
                reciprocal_rank_fusion([[i for i, _ in b], [i for i, _ in p]], k=10)
                for b, p in zip(beams, priors, strict=True)
            ],
        }
        for fusion, wanted in expected.items():
            fused = model.recommend_fused(histories, k=10, fusion=fusion, exclude_seen=exclude_seen)
            assert [[i for i, _ in r] for r in fused] == [[i for i, _ in r] for r in wanted]
            for history, ranked, beam in zip(histories, fused, beams, strict=True):
                assert len(ranked) == 10
                assert not exclude_seen or not set(history) & {i for i, _ in ranked}
                reached_past_the_beam |= bool({i for i, _ in ranked} - {i for i, _ in beam[:10]})
    assert reached_past_the_beam


def test_when_the_beam_and_the_item_prior_agree_fusion_changes_no_order(movielens_small):
    """With the decoder's own scores silenced and the prior at weight 1 the beam ranks as the prior does (above), so
    both fusions must return that same ranking."""
    snapshot, table, sequences = movielens_small
    options = {**TINY_GENERATIVE, "task": "recommendation", "beam_size": 30, "inference_precision": "fp32"}
    model = GenerativeModel.create(table, snapshot, options)
    model._start_item_vectors(None, progress=False)
    with torch.no_grad():
        model.network.logit_scale.fill_(-30.0)
        model.network.prior_weight.zero_()
    histories = [sequence[:-1] for sequence in sequences[:6]]
    alone = [[i for i, _ in r] for r in model.rank_by_item_prior(histories, k=10)]
    for fusion in RECOMMENDATION_FUSIONS:
        assert [[i for i, _ in r] for r in model.recommend_fused(histories, k=10, fusion=fusion)] == alone


def test_a_fused_recommendation_refuses_an_unknown_fusion_a_k_past_the_beam_and_a_retriever(rq_ids, movielens_small):
    snapshot, table, sequences = movielens_small
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "task": "recommendation", "beam_size": 10})
    with pytest.raises(ConfigError, match="fusion must be one of"):
        model.recommend_fused([sequences[0]], fusion="mean")
    with pytest.raises(ConfigError, match="beam size 10"):
        model.recommend_fused([sequences[0]], k=11)
    snapshot, table = rq_ids
    with pytest.raises(ConfigError, match="retriever"):
        GenerativeModel.create(table, snapshot, TINY_GENERATIVE).recommend_fused([["x"]])
