from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmindexer.downstream.pseudo_queries import (
    MAX_SPAN_WORDS,
    MIN_SPAN_WORDS,
    pseudo_queries,
    pseudo_query_pairs,
    sentence_spans,
)

TEXT = (
    "The Tower Bridge crosses the River Thames in London. It was built between 1886 and 1894! "
    'Why is it "so famous today?" Short one. '
    "Its bascules are raised about eight hundred times a year for river traffic."
)


def test_sentences_of_too_few_words_are_dropped_and_long_ones_cut():
    spans = sentence_spans(TEXT + " " + " ".join(f"w{n}" for n in range(100)) + ".")
    assert spans[:4] == [
        "The Tower Bridge crosses the River Thames in London.",
        "It was built between 1886 and 1894!",
        'Why is it "so famous today?"',
        "Its bascules are raised about eight hundred times a year for river traffic.",
    ]
    assert "Short one." not in spans
    assert len(spans[4].split()) == MAX_SPAN_WORDS
    assert all(len(span.split()) >= MIN_SPAN_WORDS for span in spans)


def test_an_item_gets_at_most_count_distinct_sentences_of_its_own_text():
    chosen = pseudo_queries("wiki-1", TEXT, 3)
    assert len(chosen) == 3 == len(set(chosen))
    assert set(chosen) <= set(sentence_spans(TEXT))
    assert len(pseudo_queries("wiki-1", TEXT, 10)) == 4
    assert pseudo_queries("wiki-1", TEXT, 0) == []


def test_a_one_sentence_text_gets_none_its_whole_text_is_already_an_example():
    assert pseudo_queries("x", "Only this one sentence is here.", 5) == []
    assert pseudo_queries("x", "", 5) == []


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=5, unique=True), st.integers(0, 3))
def test_an_items_pseudo_queries_do_not_depend_on_the_other_items(others, seed):
    texts = {f"item-{name}": f"{TEXT} About {name} and more words here." for name in others}
    alone = list(pseudo_query_pairs({"item-z": TEXT}, 2, seed))
    with_others = [pair for pair in pseudo_query_pairs({**texts, "item-z": TEXT}, 2, seed) if pair[1] == "item-z"]
    assert with_others == alone
    assert pseudo_queries("item-z", TEXT, 2, seed) == [query for query, _ in alone]


def test_the_seed_and_the_item_choose_the_sentences():
    choices = {tuple(pseudo_queries(f"item-{n}", TEXT, 2, seed)) for n in range(10) for seed in range(3)}
    assert len(choices) > 3
