from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_GENERATIVE
from testsupport.downstream_models import recall_of_held_out_next_items, teacher_forced_log_probability

from lmindexer.downstream.generative import GenerativeModel
from lmindexer.errors import ConfigError


@pytest.fixture(scope="module")
def trained(rq_ids, title_pairs, item_texts):
    """A tiny retriever trained on (title -> ID) for 200 items plus every item's (text -> ID)."""
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, TINY_GENERATIVE)
    model.embed_items(item_texts)  # the default dense prior's item embeddings, so that the untrained model ranks
    before = model.evaluate_retrieval(title_pairs[:200])
    stats = model.fit_retrieval(title_pairs[:200], item_texts)
    return model, before, stats


def test_training_lowers_the_loss_and_learns_the_training_queries(trained, title_pairs):
    model, before, stats = trained
    assert stats["pairs"] == 200 and stats["indexing_pairs"] == 320
    assert stats["epoch_loss"][-1] < 0.8 * stats["epoch_loss"][0]
    after = model.evaluate_retrieval(title_pairs[:200])
    assert after["recall@10"] > before["recall@10"] + 0.3
    assert set(after) >= {"recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10"}


def test_constrained_search_only_returns_ids_that_exist(trained, title_pairs, rq_ids):
    """Every beam hypothesis is an existing ID, so asking for the whole beam always fills it.

    The search drops a finished beam that maps to no item, so results that merely exist would not show that the
    decoding was constrained: an unconstrained beam also ends in existing items, only fewer of them. Every prefix the
    trie lets through has an existing completion, so a constrained beam never runs short while the model holds at
    least ``beam_size`` items: a full list of distinct existing items for every query shows that no beam was spent
    on an ID of no item.
    """
    model, _, _ = trained
    _, table = rq_ids
    sids = table.sid_map()
    beam = model.config.beam_size
    assert len(model.trie) >= beam
    results = model.search([q for q, _ in title_pairs], k=beam)
    assert len(results) == len(title_pairs)
    for ranked in results:
        ids = [item_id for item_id, _ in ranked]
        assert len(ids) == beam and len(set(ids)) == beam
        assert all(item_id in sids for item_id in ids)
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)


def test_the_trie_is_what_keeps_an_untrained_model_on_existing_ids(rq_ids, title_pairs):
    snapshot, table = rq_ids
    # The decoder alone: the dense prior scores only existing prefixes, so it would keep the model on them too.
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "dense_prior": False})
    queries = [q for q, _ in title_pairs]
    network = model.network.eval()
    batch = network.backbone.tokenize(queries, model.config.max_length)
    memory = network.encode(batch["input_ids"], batch["attention_mask"])
    prefix = torch.zeros((len(queries), 0), dtype=torch.long)
    with torch.no_grad():
        for position in range(network.depth):
            state = network.states(memory, batch["attention_mask"], prefix)[:, position]
            prefix = torch.cat([prefix, network.logits(state, position, prefix).argmax(-1, keepdim=True)], dim=1)
    unconstrained = [model.trie.item_for(tokens) for tokens in prefix.tolist()]
    assert sum(item is None for item in unconstrained) > len(queries) // 2  # mostly IDs of no item
    valid = set(table.sid_map())
    for ranked in model.search(queries, k=10):
        assert ranked and {item_id for item_id, _ in ranked} <= valid


def test_removed_items_are_never_returned_and_inserted_ones_are(rq_ids, title_pairs, item_texts):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "epochs": 1})
    model.embed_items(item_texts)
    keep = [item_id for _, item_id in title_pairs[:3]]
    for item_id in list(table.sid_map()):
        if item_id not in keep:
            assert model.remove(item_id)
    queries = [q for q, _ in title_pairs[:40]]
    for ranked in model.search(queries, k=10):
        assert sorted(item_id for item_id, _ in ranked) == sorted(keep)
    # A newly indexed item (the next suffix of an existing code tuple) is retrievable at once, no retraining.
    codes, suffix = model.vocabulary.tokens_of_sid(table.sid_map()[keep[0]])[:-1], 0
    taken = {tokens[-1] for _, tokens in model.trie if tokens[:-1] == codes}
    suffix = max(taken) + 1
    model.insert("wiki-new", "-".join(str(c) for c in (*codes, suffix)))
    assert model.sid_of("wiki-new") == "-".join(str(c) for c in (*codes, suffix))
    for ranked in model.search(queries, k=10):
        assert "wiki-new" in {item_id for item_id, _ in ranked}
    with pytest.raises(ConfigError, match=r"suffix .* outside this model's vocabulary.*retrain"):
        model.insert("wiki-far", "-".join(str(c) for c in (*codes, model.vocabulary.sizes[-1])))
    assert model.sync(table) == {"inserted": len(table) - 3, "removed": 1, "items": len(table)}


def test_save_and_load_reproduce_the_rankings(trained, title_pairs, tmp_path):
    model, _, _ = trained
    model.remove(title_pairs[0][1])
    directory = model.save(tmp_path / "retriever")
    assert sorted(p.name for p in directory.iterdir()) == ["generative.json", "tokenizer", "weights.safetensors"]
    document = json.loads((directory / "generative.json").read_text())
    assert title_pairs[0][1] not in document["ids"] and len(document["ids"]) == len(model.trie)
    loaded = GenerativeModel.load(directory)
    queries = [q for q, _ in title_pairs[:50]]
    assert loaded.search(queries, k=5) == model.search(queries, k=5)


def test_every_id_kind_starts_from_the_same_backbone(lm_ids, rq_ids):
    """Without from_snapshot, the model for LMIndexer IDs starts exactly as the one for rq-kmeans IDs does."""
    lm_model = GenerativeModel.create(lm_ids[1], lm_ids[0], TINY_GENERATIVE)
    rq_model = GenerativeModel.create(rq_ids[1], rq_ids[0], TINY_GENERATIVE)
    assert lm_model.initialised_from == rq_model.initialised_from == "backbone"
    rq_backbone = rq_model.network.backbone.state_dict()
    for name, tensor in lm_model.network.backbone.state_dict().items():
        assert torch.equal(tensor, rq_backbone[name]), name


def test_from_snapshot_the_model_starts_from_the_indexers_encoder_and_codebooks(lm_ids, rq_ids):
    snapshot, table = lm_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "from_snapshot": True})
    assert model.initialised_from == f"lmindexer snapshot {snapshot.version}"
    assert model.vocabulary.sizes[:-1] == (8, 8, 8)
    for position, codebook in enumerate(snapshot.model.codebooks):
        expected = torch.nn.functional.normalize(codebook.detach(), dim=-1)
        assert torch.allclose(model.network.token_vectors[position], expected)
        assert torch.allclose(model.network.output_vectors[position], expected)
    encoder = model.network.backbone.encoder_module.state_dict()
    source = snapshot.model.encoder.model.state_dict()
    assert source, "the snapshot has encoder weights"
    for name, tensor in source.items():
        assert torch.equal(encoder[name], tensor), name
    plain = GenerativeModel.create(table, snapshot, TINY_GENERATIVE).network.backbone.encoder_module.state_dict()
    assert any(not torch.equal(plain[name], tensor) for name, tensor in source.items()), "the copy changed nothing"
    with pytest.raises(ConfigError, match="from_snapshot needs the LMIndexer snapshot"):
        GenerativeModel.create(rq_ids[1], rq_ids[0], {**TINY_GENERATIVE, "from_snapshot": True})


def test_bad_options_and_mismatched_ids_fail_clearly(rq_ids, lm_ids):
    snapshot, table = rq_ids
    with pytest.raises(ConfigError, match="epochs"):
        GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "epochs": 0})
    with pytest.raises(ConfigError, match="bogus_option"):
        GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "bogus_option": 1})
    with pytest.raises(ConfigError, match="come from snapshot"):
        GenerativeModel.create(table, lm_ids[0], TINY_GENERATIVE)
    model = GenerativeModel.create(table, snapshot, TINY_GENERATIVE)
    with pytest.raises(ConfigError, match="k must be between 1 and the beam size 10"):
        model.search(["x"], k=11)
    with pytest.raises(ConfigError, match="is a retriever; train it with fit_retrieval"):
        model.fit_recommendation([["a", "b"]])
    with pytest.raises(ConfigError, match="new ID space"):
        model.sync(lm_ids[1])


@pytest.fixture(scope="module")
def recommender(movielens_small):
    snapshot, table, sequences = movielens_small
    options = {**TINY_GENERATIVE, "task": "recommendation", "history_window": 8, "epochs": 4, "batch_size": 64}
    model = GenerativeModel.create(table, snapshot, options)
    stats = model.fit_recommendation([s[:-1] for s in sequences])
    return model, stats


def test_a_recommender_learns_next_items_from_real_histories(recommender, movielens_small):
    _, table, sequences = movielens_small
    model, stats = recommender
    train = [s[:-1] for s in sequences]
    assert stats["examples"] == sum(len(s) - 1 for s in train)
    assert stats["epoch_loss"][-1] < stats["epoch_loss"][0]
    recall, chance = recall_of_held_out_next_items(model, table, sequences)
    assert recall > 2 * chance  # far above picking 10 of the catalogue at random
    with pytest.raises(ConfigError, match="no item with a semantic ID"):
        model.recommend([["not-an-item"]])


def test_a_recommender_can_leave_out_the_items_a_history_holds(recommender, movielens_small):
    _, _, sequences = movielens_small
    model, _ = recommender
    histories = [s[:-1] for s in sequences]
    beam = model.config.beam_size
    full = model.recommend(histories, k=beam)
    # Off (the default): seen items can come back.
    assert any({i for i, _ in ranked[:5]} & set(h) for h, ranked in zip(histories, full, strict=True))
    assert model.recommend(histories, k=5) == [ranked[:5] for ranked in full]
    # On: never a seen item, and no beam is spent on seen items: a full beam of unseen items for every history,
    # holding every unseen item the unconstrained beam found, with its score.
    unseen = model.recommend(histories, k=beam, exclude_seen=True)
    short = 0
    for history, ranked, kept in zip(histories, full, unseen, strict=True):
        assert not {i for i, _ in kept} & set(history)
        assert len(kept) == beam
        scores = dict(kept)
        for item_id, score in ranked:
            if item_id not in history:
                assert scores[item_id] == pytest.approx(score, abs=1e-5)
        assert [score for _, score in kept] == sorted(scores.values(), reverse=True)
        short += len([i for i, _ in ranked if i not in history]) < beam
    assert short  # filtering the unconstrained beam afterwards would have left some histories short
    metrics = model.evaluate_recommendation(histories, [s[-1] for s in sequences], exclude_seen=True)
    assert np.isfinite(metrics["recall@10"])


def test_excluding_items_in_the_beam_is_the_exact_ranking_without_them(recommender, movielens_small):
    """With a beam as large as the catalogue the search is exhaustive: excluding a history's items inside it must
    give exactly the full ranking with those items taken out, the same scores in the same order."""
    _, _, sequences = movielens_small
    model, _ = recommender
    histories = [s[:-1] for s in sequences[:6]]
    everything = len(model.trie)
    with torch.no_grad():
        memory, mask = model._encode_histories(model._history_batch(histories))
        full = model.network.beam_search(memory, mask, model.trie, everything)
        pruned = model.network.beam_search(memory, mask, model.trie, everything, excluded=histories)
    for history, ranked, kept in zip(histories, full, pruned, strict=True):
        assert len(ranked) == everything
        expected = [(i, score) for i, score in ranked if i not in history]
        assert [i for i, _ in kept] == [i for i, _ in expected]
        assert [score for _, score in kept] == pytest.approx([score for _, score in expected], abs=1e-5)


def test_a_source_with_fewer_live_beams_is_padded_without_changing_any_ranking(
    recommender, movielens_small, monkeypatch
):
    """The decoder keeps the same number of rows per source. Excluding every item under one first token for one
    source leaves it fewer live beams than the others at the next position, so its rows are padded: its ranking must
    still be exactly the full ranking without those items, the other sources' rankings must not move, and decoding
    with one copy of each source's memory must give what decoding with a copy per row (the cache path) gives."""
    from lmindexer.indexers.lm import backbone as backbone_module

    _, _, sequences = movielens_small
    model, _ = recommender
    histories = [s[:-1] for s in sequences[:5]]
    batch = model._history_batch(histories)
    everything = len(model.trie)
    first = model.trie.allowed(())[0]
    subtree = {item_id for item_id, ids in model.trie if ids[0] == first}
    excluded = [subtree, *[set() for _ in histories[1:]]]

    def search(shared: bool) -> tuple[list, list]:
        monkeypatch.setattr(backbone_module, "shares_memory", lambda decoder: shared)
        with torch.no_grad():
            memory, mask = model._encode_histories(batch)
            full = model.network.beam_search(memory, mask, model.trie, everything)
            pruned = model.network.beam_search(memory, mask, model.trie, everything, excluded=excluded)
        return full, pruned

    full, pruned = search(shared=True)
    assert 0 < len(subtree) < everything
    assert [i for i, _ in pruned[0]] == [i for i, _ in full[0] if i not in subtree]
    assert [s for _, s in pruned[0]] == pytest.approx([s for i, s in full[0] if i not in subtree], abs=1e-5)
    for kept, ranked in zip(pruned[1:], full[1:], strict=True):
        assert [i for i, _ in kept] == [i for i, _ in ranked]
        assert [s for _, s in kept] == pytest.approx([s for _, s in ranked], abs=1e-5)
    cached_full, cached_pruned = search(shared=False)
    for ours, theirs in zip(full + pruned, cached_full + cached_pruned, strict=True):
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], abs=1e-5)


def test_equal_scores_are_ranked_and_cut_by_their_tokens_ascending(trained, title_pairs, monkeypatch):
    """With every logit equal, each position's candidates tie in large groups (the same number of children under
    the same parent score). The beam keeps, and ranks, tied candidates by their tokens, ascending, at every
    position: exactly what a plain beam search ordering by (score, tokens) keeps."""
    model, _, _ = trained
    network, trie = model.network, model.trie
    sizes = network.sizes
    monkeypatch.setattr(
        network, "logits", lambda state, position, prefix, prior=None: torch.zeros(state.size(0), sizes[position])
    )
    batch = network.backbone.tokenize([q for q, _ in title_pairs[:3]], model.config.max_length)
    beam = 5
    with torch.no_grad():
        memory = network.encode(batch["input_ids"], batch["attention_mask"])
        found = network.beam_search(memory, batch["attention_mask"], trie, beam)

    kept: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for _ in range(trie.depth):
        candidates = [
            ((*tokens, token), score - math.log(len(trie.allowed(tokens))))
            for tokens, score in kept
            for token in trie.allowed(tokens)
        ]
        kept = sorted(candidates, key=lambda c: (-c[1], c[0]))[:beam]
    assert len(trie.allowed(())) > beam  # the first position's ties are cut
    expected = [trie.item_for(tokens) for tokens, _ in kept]
    for ranked in found:
        assert [item_id for item_id, _ in ranked] == expected
        assert [score for _, score in ranked] == pytest.approx([score for _, score in kept], abs=1e-5)


def test_bf16_decoding_really_runs_in_bf16_and_ranks_nearly_as_fp32_does(trained, title_pairs, monkeypatch):
    model, _, _ = trained
    captured: list[torch.Tensor] = []
    beam_search = model.network.beam_search

    def spy(memory, *args, **kwargs):
        captured.append(memory.detach().float().clone())
        return beam_search(memory, *args, **kwargs)

    monkeypatch.setattr(model.network, "beam_search", spy)
    queries = [q for q, _ in title_pairs[:100]]
    found, memory = {}, {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setattr(model, "precision", precision)
        captured.clear()
        found[precision] = [[item_id for item_id, _ in ranked] for ranked in model.search(queries, k=10)]
        memory[precision] = torch.cat([m.flatten() for m in captured])
    assert not torch.equal(memory["fp32"], memory["bf16"])
    assert torch.nn.functional.cosine_similarity(memory["fp32"], memory["bf16"], dim=0) > 0.999
    same_top = np.mean([a[0] == b[0] for a, b in zip(found["fp32"], found["bf16"], strict=True)])
    assert same_top >= 0.9


def test_incremental_beam_search_scores_equal_teacher_forced_scores_from_scratch(trained, title_pairs, monkeypatch):
    """The beam search decodes incrementally (cached decoder states, the memory projected once); each ID it returns
    must carry exactly the log-probability that recomputing every position from scratch gives that ID, with the
    softmax over the trie's allowed tokens (the dense prior's scores included: the model has the default one)."""
    model, _, _ = trained
    monkeypatch.setattr(model, "precision", "fp32")
    assert model.prior is not None
    queries = [q for q, _ in title_pairs[:12]]
    found = model.search(queries, k=model.config.beam_size)
    batch = model.network.backbone.tokenize(queries, model.config.max_length)
    mask = batch["attention_mask"]
    with torch.no_grad():
        memory = model.network.encode(batch["input_ids"], mask)
        for source, ranked in enumerate(found):
            assert len(ranked) == model.config.beam_size
            for item_id, score in ranked[:5] + ranked[-2:]:
                exact = teacher_forced_log_probability(model, memory, mask, source, model.trie.tokens_of(item_id))
                assert score == pytest.approx(exact, abs=1e-4)


def test_with_train_layers_only_the_top_encoder_layers_train_over_cached_lower_states(rq_ids, title_pairs, item_texts):
    """train_layers=1 on the two-layer tiny encoder: the embeddings and the first layer keep their weights, the top
    layer and the head change, and the split computation (cached lower states, then the top layer) is exactly what
    the whole encoder computes at search time."""
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "train_layers": 1, "epochs": 2})
    encoder = model.network.backbone.encoder_module
    before = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    stats = model.fit_retrieval(title_pairs[:100], item_texts)
    after = encoder.state_dict()
    changed = {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}
    assert changed, "the top layer trained"
    assert all(name.startswith("encoder.layer.1.") for name in changed), sorted(changed)[:5]
    assert stats["epoch_loss"][-1] < stats["epoch_loss"][0]

    model.network.eval()
    stack = model._encoder_stack()
    batch = model.network.backbone.tokenize([q for q, _ in title_pairs[:8]], 32)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        split = stack.upper(stack.lower(ids, mask, 1), mask, 1, ids)
        whole = model.network.encode(ids, mask)
    present = mask.bool()
    assert torch.allclose(split[present], whole[present], atol=1e-5)


def test_train_encoder_of_earlier_releases_reads_as_train_layers(rq_ids):
    snapshot, table = rq_ids
    assert GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "train_layers": 0}).config.train_layers == 0
    old = {key: value for key, value in TINY_GENERATIVE.items() if key != "train_layers"}
    assert GenerativeModel.create(table, snapshot, {**old, "train_encoder": True}).config.train_layers == -1
    assert GenerativeModel.create(table, snapshot, {**old, "train_encoder": False}).config.train_layers == 0
    with pytest.raises(ConfigError, match="train_layers"):
        GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "train_layers": -2})


def test_pseudo_queries_add_sentences_of_each_items_text_to_the_training(rq_ids, title_pairs, item_texts):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "pseudo_queries": 2, "epochs": 1})
    examples = model.retrieval_examples(title_pairs[:50], item_texts)
    extra = examples[50 + len(item_texts) :]
    assert examples[:50] == title_pairs[:50]
    assert 0 < len(extra) <= 2 * len(item_texts)
    for query, item_id in extra:  # a run of the item's own words
        words, text = query.split(), item_texts[item_id].split()
        assert any(text[i : i + len(words)] == words for i in range(len(text))), (query, item_id)
    stats = model.fit_retrieval(title_pairs[:50], item_texts)
    assert (stats["pairs"], stats["indexing_pairs"], stats["pseudo_queries"]) == (50, len(item_texts), len(extra))
    without = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "indexing_pairs": False, "epochs": 1})
    assert without.retrieval_examples(title_pairs[:50], item_texts) == title_pairs[:50]
