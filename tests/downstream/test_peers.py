"""Cornac's SASRec, TIGER and LETTER behind the platform's recommender interface, trained in seconds on real
histories."""

from __future__ import annotations

import numpy as np
import pytest

from lmindexer.catalog import read_items
from lmindexer.downstream.peers import CornacRecommender
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.errors import ConfigError

TINY_SASREC = {"n_epochs": 1, "embedding_dim": 16, "max_len": 10, "batch_size": 256, "n_sample": 64}
TINY_TIGER = {
    "n_epochs": 1,
    "d_model": 32,
    "d_ff": 64,
    "num_heads": 2,
    "d_kv": 16,
    "num_enc_layers": 1,
    "num_dec_layers": 1,
    "max_len": 10,
    "rqvae_codebook_size": 16,
    "n_beams": 10,
}

# LETTER's constrained k-means splits each codebook into n_clusters groups of at least 2 codes, hence 32 codes here.
TINY_LETTER = {
    **{option: value for option, value in TINY_TIGER.items() if option != "n_epochs"},
    "rqvae_codebook_size": 32,
    "rqvae_hidden_dims": (64, 32),
    "rqvae_latent_dim": 8,
    "rqvae_batch_size": 128,
    "n_clusters": 4,
    "batch_size": 128,
    "gradient_accumulation_steps": 1,
}


@pytest.fixture(scope="module")
def features(movielens_subset_parts):
    """Every catalogue item's content embedding (frozen MiniLM over title and text)."""
    catalogue = {item.item_id: item for item in read_items(movielens_subset_parts[3])[0]}
    ids = sorted(catalogue)
    vectors = TextEncoder(DEFAULT_ENCODER, max_length=64).encode(
        [f"{catalogue[i].title}. {catalogue[i].text}" for i in ids]
    )
    return dict(zip(ids, vectors, strict=True))


@pytest.fixture(scope="module")
def histories(movielens_small):
    _, _, sequences = movielens_small
    return [sequence[-12:] for sequence in sequences[:300]]


@pytest.fixture(scope="module")
def sasrec(histories):
    return CornacRecommender.sasrec(seed=0, **TINY_SASREC).fit(histories)


def test_sasrec_ranks_every_item_it_was_trained_on(sasrec, histories):
    known = {item for history in histories for item in history}
    ranked = sasrec.recommend(histories[:20], k=len(known))
    assert all(sorted(r) == sorted(known) for r in ranked)
    top = sasrec.recommend(histories[:20], k=10)
    assert top == [r[:10] for r in ranked]


def test_exclude_seen_is_the_full_ranking_without_the_history(sasrec, histories):
    known = {item for history in histories for item in history}
    full = sasrec.recommend(histories[:20], k=len(known))
    unseen = sasrec.recommend(histories[:20], k=10, exclude_seen=True)
    for history, ranked, kept in zip(histories[:20], full, unseen, strict=True):
        assert kept == [item for item in ranked if item not in set(history)][:10]
        assert not set(kept) & set(history)


def test_history_items_unknown_to_the_model_are_skipped(sasrec, histories):
    history = histories[0]
    assert sasrec.recommend([[*history, "not-an-item"]], k=5) == sasrec.recommend([history], k=5)


def test_tiger_writes_semantic_ids_of_existing_items_from_content_embeddings(histories, features):
    with pytest.raises(ConfigError, match="needs item content embeddings"):
        CornacRecommender.tiger(seed=0, **TINY_TIGER).fit(histories)
    ids = sorted(features)
    with pytest.raises(ConfigError, match="no embedding"):
        CornacRecommender.tiger(seed=0, **TINY_TIGER).fit(histories, {i: features[i] for i in ids[:10]})
    tiger = CornacRecommender.tiger(seed=0, **TINY_TIGER).fit(histories, features)
    known = {item for history in histories for item in history}
    for history, ranked in zip(histories[:10], tiger.recommend(histories[:10], k=10, exclude_seen=True), strict=True):
        assert 1 <= len(ranked) <= 10 and len(set(ranked)) == len(ranked)
        assert set(ranked) <= known and not set(ranked) & set(history)
    # TIGER ranks by generated IDs and keeps no item vectors to hand out (LETTER's alignment needs SASRec's).
    with pytest.raises(ConfigError, match="no item embedding table"):
        tiger.item_embeddings()


def test_letter_aligns_its_tokenizer_with_a_sasrec_trained_on_the_same_histories(histories, features):
    with pytest.raises(ConfigError, match="needs item content embeddings"):
        CornacRecommender.letter(seed=0, n_epochs=1, tokenizer_epochs=2, **TINY_LETTER).fit(histories)
    letter = CornacRecommender.letter(seed=0, n_epochs=1, tokenizer_epochs=2, **TINY_LETTER)
    letter.fit(histories, features)
    known = {item for history in histories for item in history}
    # The collaborative embeddings are the SASRec's item vectors at the tokenizer's width, row for row by item_id.
    sasrec = letter.collaborative
    assert sasrec.model.embedding_dim == TINY_LETTER["rqvae_latent_dim"]
    table = sasrec.model.model.item_emb.weight.detach().numpy()
    assert sorted(letter.model.cf_embedding_ids) == sorted(known)
    for item_id, row in zip(letter.model.cf_embedding_ids, letter.model.cf_embeddings, strict=True):
        assert np.array_equal(row, table[sasrec._index[item_id]])
    # A four-level semantic ID for every item, in the codebook's range, and recommendations of known unseen items.
    codes = letter.model.sid_table
    assert codes.shape == (len(known), 4) and codes.min() >= 0 and codes.max() < TINY_LETTER["rqvae_codebook_size"]
    for history, ranked in zip(histories[:10], letter.recommend(histories[:10], k=10, exclude_seen=True), strict=True):
        assert 1 <= len(ranked) <= 10 and len(set(ranked)) == len(ranked)
        assert set(ranked) <= known and not set(ranked) & set(history)


def test_each_peer_trains_for_its_own_recipe_unless_given_a_budget():
    """What --peer-budget own relies on: no epochs given, each peer keeps its recipe's; given, the budget reaches the
    model (LETTER's collaborative SASRec trains for the generator's epochs either way)."""
    from cornac.models.letter import LETTER_CONFIG
    from cornac.models.tiger import GRID_CONFIG

    assert CornacRecommender.sasrec().model.n_epochs == 10  # Cornac's SASRec default
    assert CornacRecommender.tiger().model.n_epochs == GRID_CONFIG["n_epochs"]
    own = CornacRecommender.letter()
    assert (own.model.n_epochs, own.model.rqvae_n_epochs) == (
        LETTER_CONFIG["n_epochs"],
        LETTER_CONFIG["rqvae_n_epochs"],
    )
    assert own.collaborative.model.n_epochs == LETTER_CONFIG["n_epochs"]
    budget = CornacRecommender.letter(n_epochs=3, tokenizer_epochs=150)
    assert (budget.model.n_epochs, budget.model.rqvae_n_epochs, budget.collaborative.model.n_epochs) == (3, 150, 3)
    assert CornacRecommender.tiger(n_epochs=3).model.n_epochs == 3


def test_peers_refuse_bad_input(sasrec, histories):
    with pytest.raises(ConfigError, match="not strings"):
        CornacRecommender.sasrec(**TINY_SASREC).fit(["ml-1", "ml-2"])
    with pytest.raises(ConfigError, match="without any item"):
        CornacRecommender.sasrec(**TINY_SASREC).fit([[], []])
    with pytest.raises(ConfigError, match="not fitted"):
        CornacRecommender.sasrec(**TINY_SASREC).recommend(histories[:1], k=5)
    with pytest.raises(ConfigError, match="not fitted"):
        CornacRecommender.sasrec(**TINY_SASREC).item_embeddings()
    for k in (0, True, 2.5):
        with pytest.raises(ConfigError, match="k must be"):
            sasrec.recommend(histories[:1], k=k)
