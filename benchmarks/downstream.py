"""Downstream quality of semantic IDs: generative retrieval and recommendation against the usual baselines.

One run fits both ID kinds on the same catalogue at the same L and K (``lmindexer`` and ``rq-kmeans``), trains the
same generative model on each, started the same way (the same pretrained backbone, fresh ID token vectors: the
comparison is of the IDs alone), plus a third row where the model for LMIndexer IDs starts from the snapshot that made
them (its encoder and codebooks, the paper's recipe), and evaluates everything on the same held-out split:

- retrieval (wiki-topics queries-test, clothing-reviews held-out reviews): vs BM25 (bm25s) and dense MiniLM, and the
  hybrids: RRF(BM25, dense) and score fusion(BM25, dense), and for each ID kind RRF(BM25, generative) (`serve`
  mode=rrf), RRF(BM25, dense, generative), BM25 + ID-prefix boost (`serve` mode=prefix-boost; the formula of
  lmindexer.downstream.fusion, with bm25s's scores in place of the engine's), RRF(BM25 + ID-prefix boost, dense)
  and score fusion(BM25 + ID-prefix boost, dense) (`serve` mode=hybrid, with a dense index of the same
  embeddings);
- recommendation (movielens-100k, leave-last-out): vs popularity and Cornac's peers (SASRec, TIGER, LETTER), and the
  model on rq-kmeans IDs without the item prior (the library's default has it: what it adds, in the same run), under
  both protocols (the full ranking, and with each user's history left out, `exclude_seen`, as `/recommend` answers).

    python benchmarks/downstream.py                                  # wiki-topics document retrieval
    python benchmarks/downstream.py --dataset clothing-reviews       # product search
    python benchmarks/downstream.py --dataset movielens-100k         # sequential recommendation
    python benchmarks/downstream.py --methods rq-kmeans --no-snapshot-variant   # one ID kind (about half the time)
    python benchmarks/downstream.py --dataset movielens-100k --peers letter --peers-only   # a peer alone
    python benchmarks/downstream.py --dataset movielens-100k --peers sasrec --peers-only --peer-budget own
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --examples-per-history all --epochs 1    # the recommender on every next-item step, one pass
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --examples-per-history all --epochs 10   # every step, in windows, SASRec's epochs
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --library-defaults   # the recommender as the library trains it by default
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --examples-per-history all --epochs 10 --history-window 20   # a longer history
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --examples-per-history all --epochs 10 --history-summary last-item   # SASRec's query
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --examples-per-history all --epochs 10 --history-summary last-item \
        --history-item-vectors   # histories also read the item prior's vectors (SASRec's tied item embeddings)
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --examples-per-history all --epochs 10 --history-summary last-item \
        --dropout 0.2   # the decoder's and history encoder's dropout at Cornac's SASRec's
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers --no-prior-variant \
        --sequence-training --examples-per-history all --epochs 10 --history-window 20 --history-summary last-item \
        --history-item-vectors --dropout 0.3 --history-input-dropout   # the sequence preset
    python benchmarks/downstream.py --dataset movielens-100k --peers sasrec --split valid   # choose on validation
    python benchmarks/downstream.py --dataset ~/data/books --label genre   # a catalogue of any other domain

``--dataset`` also takes a directory of the same files from any other domain: ``items.jsonl`` (the catalogue
contract) with either ``queries-train.jsonl`` and ``queries-test.jsonl`` (``{"query", "item_id"}`` lines: retrieval,
against BM25, dense and the hybrids) or ``sequences.jsonl`` (``{"user_id", "train": [...], "valid", "test"}`` lines,
each user's items in time order: recommendation, against popularity and the peers); its files and work directory
are named after it, and ``--label`` names the item field the similar-items precision is scored against.

Snapshots and ID tables are kept under --work and reused by later runs with the same options (--refit redoes them);
the trained generative models are saved there too (model-<method>/), for benchmarks/serving.py.
Writes <out>/downstream-<dataset>.json, .md and .png (downstream-<dataset>-seed-<N>.* for --seed N other than 0;
--peers-only writes downstream-<dataset>-peers[-own-recipe][-seed-<N>].*: the peers and popularity on the same split,
for comparison with a full run's file of the same seed; -own-recipe with --peer-budget own). --sequence-training adds
-sequence-training, and a recommendation budget other than 20 next-item steps per user for 3 epochs adds
-steps-<N>-epochs-<E> to the name (--library-defaults: -library-defaults), a history window other than the
budget's 10 items -window-<W>, --history-summary other than the library's mean -<summary>-summary,
--history-item-vectors -item-vectors, --dropout P -dropout-<P, its dot a p: 0p2>, --history-input-dropout
-input-dropout, --label-smoothing E -label-smoothing-<E, likewise: 0p1>, --weight-decay D -weight-decay-<D, likewise>,
--batch-size B -batch-<B>, and --split valid -valid (every model trained on the items before each user's validation
item and scored on it, the test item never read: the step to choose a recipe on, so that the test step stays a
measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import get_args

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, data_source, environment, result_file, stamp_figure, write_results

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.catalog import read_items
from lmindexer.downstream.baselines import BM25Retriever, DenseRetriever, PopularityRecommender
from lmindexer.downstream.dense import DenseIndexConfig
from lmindexer.downstream.fusion import boosted_scores, prefix_boosts, reciprocal_rank_fusion, score_fusion, top_items
from lmindexer.downstream.generative import GenerativeConfig, GenerativeModel, parse_generative_config
from lmindexer.downstream.jobs import read_queries
from lmindexer.downstream.model import HistorySummary
from lmindexer.downstream.peers import CornacRecommender
from lmindexer.downstream.ranking import rank_metrics
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.idtable import IdTable
from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.jobs import assign_ids
from lmindexer.methods import RQVAEConfig
from lmindexer.serving.limits import ServingLimits

ID_METHODS = ("lmindexer", "rq-kmeans")
RETRIEVAL_KEYS = ("recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10")
RECOMMENDATION_KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10")
TOP_K = 10
# What the recommendation-only flags ask for, in their errors.
RECOMMENDATION_SET = f"a recommendation data set (movielens-100k, or a directory with {datasets.SEQUENCES_FILE})"
# How deep each single system's ranking goes into a fusion (the generative one: its whole beam): the depth `serve`
# fuses at, so the served hybrids are the measured ones.
FUSION_DEPTH = ServingLimits().blend_candidates


def ids_for(method: str, catalogue: Path, options: dict, work: Path, refit: bool) -> tuple[object, IdTable, dict]:
    """The method's snapshot and ID table for the catalogue, fitted once and reused while the options match."""
    snapshot_dir, ids_path = work / f"snapshot-{method}", work / f"ids-{method}.parquet"
    recorded = work / f"options-{method}.json"
    wanted = json.dumps(options, sort_keys=True)
    if refit or not ids_path.exists() or not recorded.exists() or recorded.read_text() != wanted:
        items, _ = read_items(catalogue)
        indexer = create_indexer(method, options)
        started = time.perf_counter()
        indexer.fit(items, progress=True)
        fit_time = time.perf_counter() - started
        indexer.save(snapshot_dir)
        ids_path.unlink(missing_ok=True)
        assign_ids(load_snapshot(snapshot_dir), catalogue, ids_path, progress=True)
        recorded.write_text(wanted)
        (work / f"fit-{method}.json").write_text(json.dumps({"fit_s": fit_time}))
    fit_s = json.loads((work / f"fit-{method}.json").read_text())["fit_s"]
    snapshot = load_snapshot(snapshot_dir)
    table = IdTable.read(ids_path)
    suffixes = table.table.column("suffix").to_pylist()
    report = {
        "fit_s": round(fit_s, 1),
        "items": len(table),
        "collision_rate": round(sum(1 for s in suffixes if s > 0) / len(suffixes), 4),
        "largest_suffix": max(suffixes),
    }
    return snapshot, table, report


def timed_baseline(name: str, rank) -> dict:
    """A baseline's rankings and the time it took to build them (index or fit included)."""
    started = time.perf_counter()
    ranked = rank()
    return {"name": name, "ranked": ranked, "train_s": round(time.perf_counter() - started, 1)}


def item_texts(snapshot, table: IdTable, items: dict) -> dict[str, str]:
    """Each item of ``table`` as ``snapshot``'s indexer renders it: what the generative models' priors embed."""
    return dict(zip(table.item_ids, snapshot.texts([items[i] for i in table.item_ids]), strict=True))


# The recommenders' history window at the 2-core budget (the library's default reads 20) and their batch (the
# library's default is 64).
BUDGET_HISTORY_WINDOW = 10
BUDGET_BATCH_SIZE = 128


def run_generative(method: str, snapshot, table: IdTable, options: dict, train, evaluate, save_to: Path) -> dict:
    qualifiers = [", from its snapshot"] if options.get("from_snapshot") else []
    qualifiers += [", no item prior"] if options.get("item_prior") is False else []
    qualifiers += [", sequence-trained"] if options.get("sequence_training") else []
    name = f"generative ({method} IDs{''.join(qualifiers)})"
    print(f"-- {name}", flush=True)
    model = GenerativeModel.create(table, snapshot, options)
    print(
        f"   {method} IDs: vocabulary {model.vocabulary.sizes}, initialised from {model.initialised_from}", flush=True
    )
    started = time.perf_counter()
    stats = train(model)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    ranked = evaluate(model)
    eval_s = time.perf_counter() - started
    model.save(save_to)  # benchmarks/serving.py serves it
    return {
        "name": name,
        "ranked": ranked,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "epoch_loss": [round(x, 4) for x in stats["epoch_loss"]],
        "initialised_from": model.initialised_from,
        # steps: optimiser steps; windows: sequence training's
        **{key: stats[key] for key in ("steps", "examples", "windows") if key in stats},
    }


def retrieval(
    args, data_dir: Path, work: Path, id_options: dict, gen_options: dict, label_field: str
) -> tuple[list[dict], dict]:
    catalogue = data_dir / datasets.ITEMS_FILE
    items = {item.item_id: item for item in read_items(catalogue)[0]}
    train, test = (read_queries(data_dir / name) for name in datasets.QUERY_FILES)
    if args.limit_queries:
        test = test[: args.limit_queries]
    relevant = [{item_id} for _, item_id in test]
    queries = [q for q, _ in test]
    rows, id_reports, beams, id_codes = [], {}, {}, {}
    for method in args.methods:
        print(f"-- {method}: snapshot and IDs", flush=True)
        snapshot, table, report = ids_for(
            method, catalogue, {**id_options, **_method_options(method, args)}, work, args.refit
        )
        id_reports[method] = report
        texts = item_texts(snapshot, table, items)
        sids = table.sid_map()

        def fit(model, texts=texts):
            return model.fit_retrieval(train, texts, progress=True)

        def search(model):
            # The whole beam, with scores: its first TOP_K are the generative row, all of it feeds the hybrids.
            return model.search(queries, model.config.beam_size, progress=True)

        for variant in _variants(method, gen_options, args.no_snapshot_variant):
            row = run_generative(method, snapshot, table, variant, fit, search, _model_dir(work, method, variant))
            beam = row.pop("ranked")
            row["ranked"] = [[item_id for item_id, _ in ranked[:TOP_K]] for ranked in beam]
            row["kind"] = "single"
            rows.append(row)
            if not variant["from_snapshot"]:  # the hybrids use the model every ID kind trains the same way
                beams[method] = [[(item_id, sids[item_id], score) for item_id, score in ranked] for ranked in beam]
                id_codes[method] = dict(zip(table.item_ids, table.codes_list(), strict=True))

    print("-- BM25 (bm25s)", flush=True)
    ids = list(items)
    texts = create_indexer("rq-kmeans").texts([items[i] for i in ids])  # the same text the indexers read
    bm25 = timed_baseline("BM25", lambda: BM25Retriever.fit(ids, texts))
    started = time.perf_counter()
    bm25_scores = bm25.pop("ranked").match_scores(queries)
    bm25["train_s"] = round(bm25["train_s"] + time.perf_counter() - started, 1)
    bm25_ranked = [top_items(scores, FUSION_DEPTH) for scores in bm25_scores]
    bm25_scored = [[(i, scores[i]) for i in ranked] for scores, ranked in zip(bm25_scores, bm25_ranked, strict=True)]
    rows.append({**bm25, "ranked": [r[:TOP_K] for r in bm25_ranked], "kind": "single"})
    print("-- dense MiniLM", flush=True)

    dense_index: dict = {}

    def dense() -> list[list[tuple[str, float]]]:
        encoder = TextEncoder(DEFAULT_ENCODER, max_length=args.dense_max_length)
        dense_index["matrix"] = encoder.encode(list(texts))
        retriever = DenseRetriever(encoder).index_embeddings(ids, dense_index["matrix"])
        dense_index["retriever"] = retriever
        return retriever.search_scored(encoder.encode(list(queries)), FUSION_DEPTH)

    dense_row = timed_baseline("dense MiniLM", dense)
    dense_scored = dense_row.pop("ranked")
    dense_ranked = [[item_id for item_id, _ in ranked] for ranked in dense_scored]
    similar = similar_items(label_field, items, id_codes, dense_index["retriever"], dense_index["matrix"], ids)
    rows.append({**dense_row, "ranked": [r[:TOP_K] for r in dense_ranked], "kind": "single"})

    print("-- hybrids", flush=True)
    rows.append(fused_row("RRF(BM25, dense)", [bm25_ranked, dense_ranked], "hybrid"))
    rows.append(score_fused_row("score fusion(BM25, dense)", [bm25_scored, dense_scored], "hybrid"))
    for method in args.methods:
        generated = [[item_id for item_id, _, _ in ranked] for ranked in beams[method]]
        rows.append(fused_row(f"RRF(BM25, generative {method} IDs)", [bm25_ranked, generated], "ID-aware hybrid"))
        rows.append(
            fused_row(
                f"RRF(BM25, dense, generative {method} IDs)", [bm25_ranked, dense_ranked, generated], "ID-aware hybrid"
            )
        )
        boosted = prefix_boost_row(method, beams[method], bm25_scores, id_codes[method])
        rows.append(boosted)
        # The boost keeps BM25's ranking: the boosted ranking in BM25's place, fused with dense retrieval, asks
        # whether the IDs add anything on top of dense retrieval, by rank and by score (`serve` mode=hybrid).
        deep = boosted.pop("deep")
        rows.append(
            fused_row(
                f"RRF(BM25 + ID-prefix boost ({method} IDs), dense)",
                [[[item_id for item_id, _ in ranked] for ranked in deep], dense_ranked],
                "ID-aware hybrid",
            )
        )
        rows.append(
            score_fused_row(
                f"score fusion(BM25 + ID-prefix boost ({method} IDs), dense)", [deep, dense_scored], "ID-aware hybrid"
            )
        )
    for row in rows:
        row["metrics"] = rank_metrics(row.pop("ranked"), relevant)
    return rows, {**id_reports, "similar_items": similar}


def similar_items(label_field: str, items: dict, id_codes: dict, dense: DenseRetriever, matrix, ids: list[str]) -> dict:
    """Precision@10 against the data set's label of `/items/{id}/similar` for each ID kind (the longest shared ID
    prefix first, then by codes; the endpoint breaks ties within a level by sid) and of the dense nearest neighbours,
    over every item."""
    labels = {item_id: item.field_value(label_field) for item_id, item in items.items()}
    report: dict = {"label": label_field, "k": TOP_K}
    neighbours = dense.search_embeddings(matrix, TOP_K + 1)
    report["dense MiniLM"] = _precision(
        {item_id: [n for n in found if n != item_id][:TOP_K] for item_id, found in zip(ids, neighbours, strict=True)},
        labels,
    )
    for method, codes in id_codes.items():
        groups: dict[tuple, list[str]] = {}
        for item_id, item_codes in sorted(codes.items(), key=lambda pair: (tuple(pair[1]), pair[0])):
            for level in range(1, len(item_codes) + 1):
                groups.setdefault(tuple(item_codes[:level]), []).append(item_id)
        found = {}
        for item_id, item_codes in codes.items():
            picked: list[str] = []
            for level in range(len(item_codes), 0, -1):
                for other in groups[tuple(item_codes[:level])]:
                    if other != item_id and other not in picked:
                        picked.append(other)
                        if len(picked) == TOP_K:
                            break
                if len(picked) == TOP_K:
                    break
            found[item_id] = picked
        report[f"shared prefix ({method} IDs)"] = _precision(found, labels)
    return report


def _precision(found: dict[str, list[str]], labels: dict) -> float:
    scored = [item_id for item_id in found if labels.get(item_id) is not None and found[item_id]]
    shares = [sum(labels.get(n) == labels[i] for n in found[i]) / TOP_K for i in scored]
    return round(sum(shares) / len(shares), 4) if shares else 0.0


def fused_row(name: str, rankings: list[list[list[str]]], kind: str) -> dict:
    """Reciprocal rank fusion (lmindexer.downstream.fusion, its one configuration) of per-query rankings."""
    started = time.perf_counter()
    ranked = [
        [item_id for item_id, _ in reciprocal_rank_fusion(per_query, k=TOP_K)]
        for per_query in zip(*rankings, strict=True)
    ]
    return {"name": name, "ranked": ranked, "fuse_s": round(time.perf_counter() - started, 2), "kind": kind}


def score_fused_row(name: str, rankings: list[list[list[tuple[str, float]]]], kind: str) -> dict:
    """Score fusion (lmindexer.downstream.fusion, its one configuration: equal weights) of per-query scored
    rankings, each FUSION_DEPTH deep: what `serve` mode=hybrid answers."""
    started = time.perf_counter()
    ranked = [[item_id for item_id, _ in score_fusion(per_query, k=TOP_K)] for per_query in zip(*rankings, strict=True)]
    return {"name": name, "ranked": ranked, "fuse_s": round(time.perf_counter() - started, 2), "kind": kind}


def prefix_boost_row(method: str, beams: list, bm25_scores: list[dict[str, float]], codes: dict) -> dict:
    """BM25 plus the generative beam's ID-prefix boost: what `serve` mode=prefix-boost asks the engine for. Its
    rankings go FUSION_DEPTH deep, with their scores (``deep``), so that they can be fused with dense retrieval too."""
    started = time.perf_counter()
    by_first_code: dict[int, list[str]] = {}
    for item_id, item_codes in codes.items():
        by_first_code.setdefault(int(item_codes[0]), []).append(item_id)
    scored = []
    for beam, text_scores in zip(beams, bm25_scores, strict=True):
        boosts = prefix_boosts([(sid, score) for _, sid, score in beam])
        # Only items under a boosted first code can gain anything: score just those.
        candidates = [i for prefix in boosts.boosts.get(1, {}) for i in by_first_code.get(int(prefix), [])]
        scores = boosted_scores(text_scores, {i: codes[i] for i in candidates}, boosts)
        scored.append([(item_id, scores[item_id]) for item_id in top_items(scores, FUSION_DEPTH)])
    return {
        "name": f"BM25 + ID-prefix boost ({method} IDs)",
        "ranked": [[item_id for item_id, _ in ranked[:TOP_K]] for ranked in scored],
        "deep": scored,
        "fuse_s": round(time.perf_counter() - started, 2),
        "kind": "ID-aware hybrid",
    }


def recommended_item_ids(
    model: GenerativeModel, histories: Sequence[Sequence[str]], k: int, exclude_seen: bool, *, progress: bool = False
) -> list[list[str]]:
    """A generative recommender's top ``k`` item_ids per history, its scores dropped: what the peers' and the
    popularity baseline's ``recommend`` return, so that one ranking metric reads them all."""
    found = model.recommend(histories, k, progress=progress, exclude_seen=exclude_seen)
    return [[item_id for item_id, _ in ranked] for ranked in found]


def scored_users(
    sequences: Sequence[datasets.UserSequence], split: str, catalogue: Collection[str]
) -> tuple[list[list[str]], list[str], dict[str, int]]:
    """Every model's histories (to train on and to recommend from) and held-out items, and the users' counts.
    Training and evaluation histories are the same: the held-out item (the test item, or at ``split`` valid the
    validation item, the test item then never read) is the only thing left out. Every model reads the same items:
    those of the catalogue (an interaction with an item the catalogue lacks, or rejected, is left out of its history,
    as a deleted item is). A user with no catalogued item before the held-out one has nothing to recommend from and is
    not scored (MovieLens-100k has none), so every model is scored on the same users."""
    histories, targets = [], []
    for sequence in sequences:
        history, held_out = sequence.held_out(split)
        known = [item_id for item_id in history if item_id in catalogue]
        if known:
            histories.append(known)
            targets.append(held_out)
    users = {
        "users": len(sequences),
        "scored": len(histories),
        "without_catalogued_history": len(sequences) - len(histories),
    }
    if not histories:
        raise SystemExit(f"no user has a catalogued item before the held-out one at split {split}: nothing to score")
    return histories, targets, users


def recommendation(args, data_dir: Path, work: Path, id_options: dict, gen_options: dict) -> tuple[list[dict], dict]:
    catalogue = data_dir / datasets.ITEMS_FILE
    items = {item.item_id: item for item in read_items(catalogue)[0]}
    sequences = datasets.read_sequences(data_dir / datasets.SEQUENCES_FILE)
    histories, targets, users = scored_users(sequences, args.split, items)
    relevant = [{t} for t in targets]
    rows, id_reports = [], {"users": users}
    peers = peer_rows(args, catalogue, histories, gen_options)  # first: the cheaper models fail fast
    for method in [] if args.peers_only else args.methods:
        print(f"-- {method}: snapshot and IDs", flush=True)
        snapshot, table, report = ids_for(
            method, catalogue, {**id_options, **_method_options(method, args)}, work, args.refit
        )
        id_reports[method] = report

        texts = item_texts(snapshot, table, items)  # where the item prior's vectors start

        def fit(model, texts=texts):
            return model.fit_recommendation(histories, texts, progress=True)

        def recommend(model):
            # Both protocols: the full ranking, and with each user's history left out (what /recommend returns).
            return {e: recommended_item_ids(model, histories, TOP_K, e, progress=True) for e in (False, True)}

        for variant in _variants(
            method, gen_options, args.no_snapshot_variant, recommendation=True, prior_ablation=not args.no_prior_variant
        ):
            save_to = _model_dir(work, method, variant, _budget_suffix(args) + split_suffix(args.split))
            rows.append(run_generative(method, snapshot, table, variant, fit, recommend, save_to))
    rows += peers
    popularity = PopularityRecommender()

    def popular() -> dict[bool, list[list[str]]]:
        popularity.fit(histories)
        return {e: popularity.recommend(histories, TOP_K, exclude_seen=e) for e in (False, True)}

    rows.append(timed_baseline("popularity", popular))
    for row in rows:
        ranked = row.pop("ranked")
        row["metrics"] = rank_metrics(ranked[False], relevant)
        row["metrics_exclude_seen"] = rank_metrics(ranked[True], relevant)
    return rows, id_reports


def content_embeddings(catalogue: Path, max_length: int) -> dict[str, np.ndarray]:
    """Every item's frozen-MiniLM embedding of the text the indexers read (TIGER's and LETTER's content input)."""
    items, _ = read_items(catalogue)
    vectors = TextEncoder(DEFAULT_ENCODER, max_length=max_length).encode(create_indexer("rq-kmeans").texts(items))
    return dict(zip([item.item_id for item in items], vectors, strict=True))


def peer_rows(args, catalogue: Path, histories: list[list[str]], gen_options: dict) -> list[dict]:
    """Cornac's SASRec, TIGER (its GRID recipe) and LETTER (its released recipe) on the same histories. With
    ``--peer-budget ours`` they get the generative model's training budget: the same next-item steps per user (each
    history cut to its last examples_per_history + 1 items) for the same number of epochs; LETTER's tokenizer trains
    for as many epochs as the platform's RQ-VAE indexer. With ``--peer-budget own`` each trains on every next-item
    step of the whole histories for its own recipe's epochs (Cornac's defaults: SASRec 10, TIGER's GRID recipe 50,
    LETTER's release 200 and its tokenizer 10,000), still without a validation split to select on. They read each
    full history when recommending (their own max_len)."""
    if not args.peers:
        return []
    if args.peer_budget == "own":
        steps, budget, suffix = None, {}, ", own recipe"
    else:  # None: every step, as the generative models then train
        steps, budget, suffix = gen_options["examples_per_history"], {"n_epochs": gen_options["epochs"]}, ""
    train = histories if steps is None else [history[-(steps + 1) :] for history in histories]
    rows = []
    peers = {"sasrec": ("SASRec (cornac{})", CornacRecommender.sasrec)}
    peers["tiger"] = ("TIGER (cornac, GRID recipe{})", CornacRecommender.tiger)
    letter_budget = {} if args.peer_budget == "own" else {"tokenizer_epochs": RQVAEConfig().epochs}
    peers["letter"] = (
        "LETTER (cornac, released recipe{})",
        lambda **options: CornacRecommender.letter(**letter_budget, **options),
    )
    features = None
    for peer_name in args.peers:
        name, build = peers[peer_name]
        name = name.format(suffix)
        print(f"-- {name}", flush=True)
        peer = build(seed=args.seed, **budget)
        if peer.needs_item_features and features is None:
            features = content_embeddings(catalogue, args.dense_max_length)
        started = time.perf_counter()
        peer.fit(train, features)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        ranked = {e: peer.recommend(histories, TOP_K, exclude_seen=e) for e in (False, True)}
        rows.append({
            "name": name,
            "ranked": ranked,
            "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - started, 1),
            "budget": {  # what the peer actually trained with, read back from the Cornac model
                "recipe": args.peer_budget,
                "epochs": peer.model.n_epochs,
                "next_item_steps_per_user": "all" if steps is None else steps,
                **({"tokenizer_epochs": peer.model.rqvae_n_epochs} if peer_name == "letter" else {}),
            },
        })  # fmt: skip
    return rows


def _variants(
    method: str,
    options: dict,
    skip_snapshot_variant: bool = False,
    *,
    recommendation: bool = False,
    prior_ablation: bool = True,
) -> list[dict]:
    """Every ID kind's model from the backbone; for LMIndexer IDs also the one that starts from its snapshot; for
    recommendation also the anchor's (rq-kmeans IDs) model without the item prior (what the prior adds, in the same
    run, at a quarter of the run's training time rather than a half)."""
    variants = [{**options, "from_snapshot": False}]
    if method == "lmindexer" and not skip_snapshot_variant:
        variants.append({**options, "from_snapshot": True})
    if recommendation and method == "rq-kmeans" and prior_ablation:
        variants.append({**options, "from_snapshot": False, "item_prior": False})
    return variants


def _model_dir(work: Path, method: str, options: dict, budget: str = "") -> Path:
    name = f"model-{method}-from-snapshot" if options["from_snapshot"] else f"model-{method}"
    name += "-no-item-prior" if options.get("item_prior") is False else ""
    return work / (name + ("-sequence-trained" if options.get("sequence_training") else "") + budget)


# Flags that set the generative recommenders' option of the same name, left to the library's default when not given.
RECOMMENDER_OPTION_FLAGS = (
    "batch_size",
    "history_summary",
    "history_item_vectors",
    "dropout",
    "history_input_dropout",
    "label_smoothing",
    "weight_decay",
)


def _given(value: object) -> bool:
    """Whether a flag was given: a value (0.0 included) or a switch turned on."""
    return value is not None and value is not False


def _budget_suffix(args) -> str:
    """What names a recommendation budget's files and model directories apart from the 2-core budget's
    (--library-defaults and --history-window exclude each other)."""
    if args.library_defaults:
        suffix = "-library-defaults"
    else:
        suffix = f"-window-{args.history_window}" if args.history_window not in (None, BUDGET_HISTORY_WINDOW) else ""
    default_summary = GenerativeConfig.model_fields["history_summary"].default
    suffix += f"-{args.history_summary}-summary" if args.history_summary not in (None, default_summary) else ""
    suffix += "-item-vectors" if args.history_item_vectors else ""
    # The dot written as p: the name the stored results carry (``-dropout-0p2``), and one a shell glob reads plainly.
    suffix += f"-dropout-{args.dropout:g}".replace(".", "p") if args.dropout is not None else ""
    suffix += "-input-dropout" if args.history_input_dropout else ""
    suffix += f"-label-smoothing-{args.label_smoothing:g}".replace(".", "p") if args.label_smoothing else ""
    suffix += f"-weight-decay-{args.weight_decay:g}".replace(".", "p") if args.weight_decay is not None else ""
    return suffix + (f"-batch-{args.batch_size}" if args.batch_size is not None else "")


def split_suffix(split: str) -> str:
    """What names a run scored at the validation step apart from one scored at the test step (files and models; also
    benchmarks/recommender_parts.py's files)."""
    return "" if split == "test" else f"-{split}"


def _method_options(method: str, args) -> dict:
    return {"preset": args.lm_preset} if method == "lmindexer" else {}


def hybrid_summary(rows: list[dict]) -> dict:
    """The hybrid aim: the best ID-aware hybrid against the best single system, in NDCG@10."""
    single = max((r for r in rows if r["kind"] == "single"), key=lambda r: r["metrics"]["ndcg@10"])
    hybrid = max((r for r in rows if r["kind"] == "ID-aware hybrid"), key=lambda r: r["metrics"]["ndcg@10"])
    best_single, best_hybrid = single["metrics"]["ndcg@10"], hybrid["metrics"]["ndcg@10"]
    return {
        "best_single": single["name"],
        "best_single_ndcg@10": best_single,
        "best_id_aware_hybrid": hybrid["name"],
        "best_id_aware_hybrid_ndcg@10": best_hybrid,
        "ratio": round(best_hybrid / best_single, 4) if best_single else None,
        "aim": 1.05,
    }


def peer_summary(rows: list[dict]) -> dict:
    """The recommendation aim: the best generative model >= each Cornac peer in NDCG@10 and Recall@10, per protocol."""
    verdicts = {}
    for protocol, key in (("full ranking", "metrics"), ("exclude_seen", "metrics_exclude_seen")):
        ours = max((r for r in rows if r["name"].startswith("generative")), key=lambda r: r[key]["ndcg@10"])
        peers = {
            r["name"]: {
                "ndcg@10": r[key]["ndcg@10"],
                "recall@10": r[key]["recall@10"],
                "met": ours[key]["ndcg@10"] >= r[key]["ndcg@10"] and ours[key]["recall@10"] >= r[key]["recall@10"],
            }
            for r in rows
            if "(cornac" in r["name"]
        }
        verdicts[protocol] = {
            "ours": ours["name"],
            "ours_ndcg@10": ours[key]["ndcg@10"],
            "ours_recall@10": ours[key]["recall@10"],
            "peers": peers,
        }
    return verdicts


def markdown(rows: list[dict], keys: tuple[str, ...], metrics: str = "metrics") -> str:
    head = "| model | kind | " + " | ".join(keys) + " | train (fusion) s |"
    lines = [head, "|" + "---|" * (len(keys) + 3)]
    for row in rows:
        values = " | ".join(f"{row[metrics][k]:.4f}" for k in keys)
        lines.append(
            f"| {row['name']} | {row.get('kind', 'single')} | {values} | {row.get('train_s', row.get('fuse_s', ''))} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], keys: tuple[str, ...], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(rows), 1)
    for n, row in enumerate(rows):
        ax.bar([i + n * width for i in range(len(keys))], [row["metrics"][k] for k in keys], width, label=row["name"])
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(keys))], keys)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset",
        default="wiki-topics",
        help=f"a built-in data set ({', '.join(datasets.DATASET_NAMES)}) or a directory of the same files",
    )
    parser.add_argument(
        "--label",
        default=None,
        help="retrieval: the item field similar items are scored against (default: the data set's; category)",
    )
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--lm-preset", default="fast", choices=["fast", "tuned", "default"])
    parser.add_argument(
        "--epochs", type=int, default=None, help="generative model epochs (retrieval: the library's default)"
    )
    parser.add_argument("--limit-queries", type=int, default=None, help="evaluate only the first N test queries")
    parser.add_argument("--dense-max-length", type=int, default=DenseIndexConfig().max_length)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peers",
        nargs="*",
        default=["sasrec", "tiger", "letter"],
        choices=["sasrec", "tiger", "letter"],
        help="recommendation: which of Cornac's peers to train (TIGER and LETTER take most of the run's time on a CPU)",
    )
    parser.add_argument(
        "--peers-only",
        action="store_true",
        help="recommendation: only the peers and popularity (no IDs, no generative models); a file of its own",
    )
    parser.add_argument("--no-peers", action="store_true", help="recommendation: no Cornac peers (--peers with none)")
    parser.add_argument(
        "--peer-budget",
        default="ours",
        choices=["ours", "own"],
        help="recommendation: the peers train with the generative model's budget (ours: its epochs over the same "
        "next-item steps per user) or with their own recipe's epochs over every step of the whole histories (own; "
        "with --peers-only only, a file of its own)",
    )
    parser.add_argument(
        "--no-snapshot-variant",
        action="store_true",
        help="skip the model that starts from the LMIndexer snapshot (a third of the run's training time)",
    )
    parser.add_argument(
        "--no-prior-variant",
        action="store_true",
        help="recommendation: skip the model on rq-kmeans IDs without the item prior (a third of the run's time)",
    )
    parser.add_argument(
        "--examples-per-history",
        default="20",
        help="recommendation: train the generative models on the last N next-item steps of each user, or on 'all' "
        "(the peers' budget follows, with --peer-budget ours); default 20, sized for 2 CPU cores",
    )
    parser.add_argument(
        "--sequence-training",
        action="store_true",
        help="recommendation: the generative models learn every next-item step of a window in one pass, over a "
        "causal history (the sequence_training option, as SASRec trains); a file of its own",
    )
    parser.add_argument(
        "--history-window",
        type=int,
        default=None,
        help="recommendation: the most recent items the generative models read (default: the budget's 10; Cornac's "
        "SASRec reads 50); a file of its own",
    )
    parser.add_argument(
        "--history-summary",
        choices=get_args(HistorySummary),
        default=None,
        help="recommendation: what stands for a history where the generative models' decoder starts and as the item "
        "prior's query (the history_summary option; default: the library's mean); a file of its own",
    )
    parser.add_argument(
        "--history-item-vectors",
        action="store_true",
        help="recommendation: each history item the generative models read also adds its item-prior vector (the "
        "history_item_vectors option; default: the library's, off); a file of its own",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"recommendation: windows (with --sequence-training) or examples per optimiser step of the generative "
        f"recommenders (default: the budget's {BUDGET_BATCH_SIZE}, Cornac's SASRec's too); a file of its own",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="recommendation: the generative recommenders' decoder and history encoder dropout (the dropout option; "
        "default: the library's, the backbone's own); a file of its own",
    )
    parser.add_argument(
        "--history-input-dropout",
        action="store_true",
        help="recommendation: the generative recommenders' history encoder also drops out its inputs, as SASRec "
        "does (the history_input_dropout option; default: the library's, off); a file of its own",
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        help="recommendation: the generative recommenders' training loss smooths each target token by this share "
        "(the label_smoothing option; default: the library's, 0); a file of its own",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="recommendation: the generative recommenders' AdamW weight decay (the weight_decay option; default: the "
        f"library's, {GenerativeConfig.model_fields['weight_decay'].default:g}); a file of its own",
    )
    parser.add_argument(
        "--library-defaults",
        action="store_true",
        help="recommendation: the generative models train at the library's own defaults (GenerativeConfig's history "
        "window, every next-item step, its epochs and batch size) instead of the 2-core budget; a file of its own",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(ID_METHODS),
        choices=ID_METHODS,
        help="ID kinds to train generative models on (rq-kmeans, the ratios' anchor, always runs)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=datasets.SPLITS,
        help="recommendation: score every model on each user's test item (default) or on the validation item, "
        "training on the items before it and never reading the test item: where to choose between recipes; a file "
        "of its own (-valid)",
    )
    parser.add_argument("--refit", action="store_true", help="refit snapshots even if matching ones are kept")
    parser.add_argument("--work", type=Path, default=None, help="where snapshots and ID tables are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    source = data_source(parser, args.dataset, label_field=args.label)
    if source.task is None:
        parser.error(
            f"data set {source.name} has no task to measure: add {' and '.join(datasets.QUERY_FILES)} (retrieval) "
            f"or {datasets.SEQUENCES_FILE} (recommendation) beside its {datasets.ITEMS_FILE}"
        )
    is_recommendation = source.task == "recommendation"
    if args.no_peers:
        args.peers = []
    if args.peers_only and (not is_recommendation or not args.peers):
        parser.error(f"--peers-only needs {RECOMMENDATION_SET} and at least one peer")
    if args.examples_per_history != "all" and not args.examples_per_history.isdigit():
        parser.error(f"--examples-per-history must be a number or 'all', got {args.examples_per_history!r}")
    if args.sequence_training and (not is_recommendation or args.peers_only):
        parser.error(f"--sequence-training trains the generative recommenders: {RECOMMENDATION_SET}, no --peers-only")
    if args.library_defaults and (
        not is_recommendation
        or args.peers_only
        or args.epochs
        or args.examples_per_history != "20"
        or args.history_window
    ):
        parser.error(
            "--library-defaults trains the generative recommenders at GenerativeConfig's defaults: "
            f"{RECOMMENDATION_SET}, no --peers-only, --epochs, --examples-per-history or --history-window"
        )
    if args.history_window and (not is_recommendation or args.peers_only):
        parser.error(f"--history-window sets the generative models' window: {RECOMMENDATION_SET}, no --peers-only")
    for option in RECOMMENDER_OPTION_FLAGS:
        if _given(getattr(args, option)) and (not is_recommendation or args.peers_only):
            parser.error(
                f"--{option.replace('_', '-')} sets the generative recommenders' option: {RECOMMENDATION_SET}, "
                "no --peers-only"
            )
    if args.split != "test" and not is_recommendation:
        parser.error(f"--split {args.split} scores an interaction log's validation step: {RECOMMENDATION_SET}")
    if args.peer_budget == "own" and not args.peers_only:
        # A full run's file is the comparison at one budget; the peers at theirs are a file of their own.
        parser.error("--peer-budget own needs --peers-only")
    args.methods = [method for method in ID_METHODS if method in {*args.methods, "rq-kmeans"}]
    env = environment()

    data_dir = source.path()
    work = args.work or cache_root() / "benchmarks" / "downstream" / source.name
    work.mkdir(parents=True, exist_ok=True)
    id_options = {"levels": args.levels, "codebook_size": args.codebook_size, "seed": args.seed}
    gen_options = {"seed": args.seed, "task": "recommendation" if is_recommendation else "retrieval"}
    if is_recommendation:
        budget = ("history_window", "examples_per_history", "batch_size", "epochs")
        if args.library_defaults:  # spelled out, so that the peers' budget (--peer-budget ours) follows them
            gen_options.update({key: GenerativeConfig.model_fields[key].default for key in budget})
        else:  # sized for a 2-core CPU: the 10 most recent items, the last 20 next-item steps of each user, 3 epochs
            steps = None if args.examples_per_history == "all" else int(args.examples_per_history)
            window = args.history_window or BUDGET_HISTORY_WINDOW
            gen_options.update(dict(zip(budget, (window, steps, BUDGET_BATCH_SIZE, args.epochs or 3), strict=True)))
        if args.sequence_training:
            gen_options["sequence_training"] = True
        gen_options.update({o: getattr(args, o) for o in RECOMMENDER_OPTION_FLAGS if _given(getattr(args, o))})
    elif args.epochs:  # retrieval trains the library's defaults otherwise (benchmarks/retrieval_steps.py)
        gen_options["epochs"] = args.epochs
    started = time.perf_counter()
    if is_recommendation:
        rows, id_reports = recommendation(args, data_dir, work, id_options, gen_options)
        keys = RECOMMENDATION_KEYS
        anchor = "popularity"
    else:
        rows, id_reports = retrieval(args, data_dir, work, id_options, gen_options, source.label_field)
        keys = RETRIEVAL_KEYS
        anchor = "generative (rq-kmeans IDs)"
    base = next(r for r in rows if r["name"] == anchor)["metrics"]["ndcg@10"]
    for row in rows:
        row["ndcg@10_ratio_to_" + anchor.split()[0]] = round(row["metrics"]["ndcg@10"] / base, 3) if base else None
    hybrid_aim = None if is_recommendation else hybrid_summary(rows)
    peer_aim = peer_summary(rows) if is_recommendation and args.peers and not args.peers_only else None
    similar = id_reports.pop("similar_items", None)
    users = id_reports.pop("users", None)

    # Seed 0 is the reference run; other seeds write files of their own, for mean +- SD over seeds.
    stem = args.out / (
        f"downstream-{source.name}"
        + ("-peers" if args.peers_only else "")
        + ("-own-recipe" if args.peer_budget == "own" else "")
        + ("-sequence-training" if args.sequence_training else "")
        # A recommendation budget other than the default is a file of its own.
        + (
            f"-steps-{args.examples_per_history}-epochs-{gen_options['epochs']}"
            if is_recommendation
            and not args.library_defaults
            and (args.examples_per_history != "20" or gen_options["epochs"] != 3)
            else ""
        )
        + _budget_suffix(args)
        + split_suffix(args.split)
        + (f"-seed-{args.seed}" if args.seed else "")
    )
    document = {
        "dataset": source.name,
        "built_in": source.directory is None,
        "split": args.split if is_recommendation else "test",
        "task": gen_options["task"],
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "lm_preset": args.lm_preset,
        "id_methods": [] if args.peers_only else args.methods,
        "peers": args.peers if is_recommendation else None,
        "peers_only": args.peers_only,
        "peer_budget": args.peer_budget if is_recommendation and args.peers else None,
        "generative_options": parse_generative_config(gen_options).model_dump(mode="json"),  # defaults included
        "ids": id_reports,
        "results": rows,
        "hybrid_aim": hybrid_aim,
        "peer_aim": peer_aim,
        "similar_items_precision@10": similar,
        "users": users,
        "wall_s": round(time.perf_counter() - started, 1),
        "environment": env,
    }
    table = markdown(rows, keys)
    if is_recommendation:
        table = (
            f"Full ranking (history items may be recommended):\n\n{table}\n\n"
            f"History items left out (`exclude_seen`, as /recommend answers):\n\n"
            f"{markdown(rows, keys, 'metrics_exclude_seen')}"
        )
    # The peers write their own IDs (or none), so the ID space's L and K name only the platform's runs.
    title = f"{source.name}: {gen_options['task']}" + (
        (", peers at their own recipes" if args.peer_budget == "own" else ", peers")
        if args.peers_only
        else f", L={args.levels}, K={args.codebook_size}"
    )
    ids_table = "\n".join(
        f"- {m} IDs: fit {r['fit_s']} s, {r['items']} items, collision rate {r['collision_rate']:.2%}, "
        f"largest suffix {r['largest_suffix']}"
        for m, r in id_reports.items()
    )
    aim_line = ""
    if hybrid_aim:
        aim_line = (
            f"\n\nBest ID-aware hybrid: {hybrid_aim['best_id_aware_hybrid']} (NDCG@10 "
            f"{hybrid_aim['best_id_aware_hybrid_ndcg@10']:.4f}); best single system: {hybrid_aim['best_single']} "
            f"({hybrid_aim['best_single_ndcg@10']:.4f}); ratio {hybrid_aim['ratio']:.3f} (aim >= 1.05)."
        )
    if peer_aim:
        for protocol, verdict in peer_aim.items():
            aim_line += (
                f"\n\n{protocol}: best generative model {verdict['ours']} (NDCG@10 {verdict['ours_ndcg@10']:.4f}, "
                f"Recall@10 {verdict['ours_recall@10']:.4f}) against "
                + "; ".join(
                    f"{name} ({v['ndcg@10']:.4f}, {v['recall@10']:.4f}): {'met' if v['met'] else 'not met'}"
                    for name, v in verdict["peers"].items()
                )
                + "."
            )
    if users:
        aim_line += (
            f"\n\nUsers scored at the {args.split} step: {users['scored']:,} of {users['users']:,} "
            f"({users['without_catalogued_history']:,} without a catalogued item before the held-out one)."
        )
    if similar:
        shares = ", ".join(f"{name} {value:.4f}" for name, value in similar.items() if name not in ("label", "k"))
        aim_line += f"\n\nSimilar items, precision@10 against `{similar['label']}` over every item: {shares}."
    write_results(
        stem,
        document,
        f"# Downstream — {title}\n\n{table}{aim_line}\n\n{ids_table}\n\n![metrics]({stem.name}.png)\n",
    )
    plot(rows, keys, result_file(stem, ".png"), title)
    stamp_figure(result_file(stem, ".png"))
    print(table)
    print(ids_table + aim_line)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
