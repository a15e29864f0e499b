"""Training and evaluating a generative recommender on a catalogue's semantic IDs, without the pipeline.

What ``lmindexer recommender train | evaluate`` run, and what ``lmindexer serve --recommender`` then serves. The
inputs are those of a retriever (the snapshot that made the IDs, the ID table, the catalogue) plus users'
histories: a JSONL file of ``{"user_id": ..., "items": [item_id, ...]}`` objects, most recent item last (or the
``sequences.jsonl`` of an interaction data set, whose ``train``, ``valid`` and ``test`` are read in that order).

- :func:`fit_recommender` trains on every (history prefix -> the item that followed it) of every history, over the
  items with a live ID (others are skipped, like a deleted item, and counted). A ``preset``
  (``RECOMMENDER_PRESETS``: ``sequence``, the best recipe measured) supplies validated options that the given options
  override. The item prior's vectors start from the items' texts as the snapshot renders them. ``hold_out_last``
  leaves each history's last item out of training, so that :func:`evaluate_recommender` on the same file is the
  leave-last-out protocol of the benchmarks.
- :func:`evaluate_recommender` ranks, for each history, the items after all but its last, and scores the ranking
  against that last item (Recall/NDCG/MRR at 10); ``exclude_seen`` (on by default, as in ``/recommend``) leaves the
  history's items out of the ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmindexer.downstream.generative import GenerativeModel, parse_generative_config, recommender_preset
from lmindexer.downstream.jobs import json_lines, model_for_catalogue, save_trained
from lmindexer.errors import ConfigError, RecommenderError


def read_histories(location: str | Path) -> list[tuple[str, list[str]]]:
    """(user_id, items) per user from a JSONL file (local or s3://) of ``{"user_id": ..., "items": [...]}``
    objects, items most recent last, or of a data set's ``{"user_id", "train": [...], "valid", "test"}`` objects
    (read as train, valid, test). A malformed line, or a user on two lines, is an error naming the line."""
    histories: list[tuple[str, list[str]]] = []
    lines: dict[str, int] = {}
    for number, row in json_lines(location, RecommenderError):
        user = row.get("user_id") if isinstance(row, dict) else None
        items = _items(row) if isinstance(row, dict) else None
        if (
            not isinstance(user, str)
            or not user
            or not isinstance(items, list)
            or not items
            or not all(isinstance(item, str) and item for item in items)
        ):
            raise RecommenderError(
                f"{location} line {number}: needs a non-empty string 'user_id' and a non-empty list 'items' of "
                "item_id strings (or a data set's 'train' list, 'valid' and 'test')"
            )
        if user in lines:
            raise RecommenderError(
                f"{location} line {number}: user {user!r} already has a history on line {lines[user]} "
                "(one line per user, items most recent last)"
            )
        lines[user] = number
        histories.append((user, items))
    if not histories:
        raise RecommenderError(f"{location} holds no histories")
    return histories


def _items(row: dict[str, Any]) -> Any:
    """A row's items: its ``items``, or a leave-last-out data set's ``train`` + ``valid`` + ``test`` (the
    ``sequences.jsonl`` that ``lmindexer datasets fetch`` writes), in time order either way."""
    if "items" in row or "train" not in row:
        return row.get("items")
    train, valid, test = row.get("train"), row.get("valid"), row.get("test")
    return [*train, valid, test] if isinstance(train, list) else None


def recommender_options(options: Mapping[str, Any] | None, preset: str | None = None) -> dict[str, Any]:
    """The options with ``task: recommendation`` (named or not); options for another task are an error. With
    ``preset`` (a name of ``RECOMMENDER_PRESETS``) its options come first and ``options`` override them."""
    values = {**(recommender_preset(preset) if preset is not None else {}), **dict(options or {})}
    task = values.setdefault("task", "recommendation")
    if task != "recommendation":
        raise ConfigError(f"a recommender's options name task {task!r}; leave it out or make it 'recommendation'")
    return values


def fit_recommender(
    snapshot: str | Path,
    ids: str | Path,
    catalog: str | Path,
    histories: str | Path,
    options: Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    hold_out_last: bool = False,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[GenerativeModel, dict[str, Any]]:
    """Train a recommender for the catalogue's items in the ID space of ``ids`` (made by ``snapshot``) on the
    histories in ``histories``; resumable with ``checkpoint_dir``, and the same code on a CPU, a GPU or several
    processes under ``accelerate launch``. ``preset`` names a recommender preset that ``options`` override.
    Returns the model and a summary of what it trained on."""
    # Before the slow loads: bad options fail at once.
    config = parse_generative_config(recommender_options(options, preset))
    users = read_histories(histories)
    start = model_for_catalogue(snapshot, ids, catalog, config, error=RecommenderError)
    trie = start.model.trie
    known = [[item for item in items if item in trie] for _, items in users]
    unknown = sum(len(items) for _, items in users) - sum(len(k) for k in known)
    sequences = [k[:-1] if hold_out_last else k for k in known]
    trained = [sequence for sequence in sequences if len(sequence) >= 2]
    if not trained:
        raise RecommenderError(
            f"no history in {histories} has two items with a live ID"
            + (" before its last one (hold_out_last)" if hold_out_last else "")
            + ": nothing to learn a next item from"
        )
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stats = start.model.fit_recommendation(trained, start.texts, checkpoint_dir=checkpoint, progress=progress)
    summary = {
        **start.summary(),
        "train_histories": str(histories),
        "users": len(trained),
        "users_skipped": len(users) - len(trained),
        "history_items_unknown": unknown,
        "held_out_last": hold_out_last,
        "preset": preset,
        "training": stats,
    }
    return start.model, summary


def train_recommender(
    snapshot: str | Path,
    ids: str | Path,
    catalog: str | Path,
    histories: str | Path,
    out: str | Path,
    options: Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    hold_out_last: bool = False,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """:func:`fit_recommender`, then save the model to ``out`` (a directory or s3:// prefix) and remove the
    checkpoint; returns the summary (None in every process of a multi-process training but the first)."""
    model, summary = fit_recommender(
        snapshot, ids, catalog, histories, options,
        preset=preset, hold_out_last=hold_out_last, checkpoint_dir=checkpoint_dir, progress=progress,
    )  # fmt: skip
    return save_trained(model, summary, out, checkpoint_dir)


def evaluate_recommender(
    model: GenerativeModel,
    users: Sequence[tuple[str, Sequence[str]]],
    *,
    exclude_seen: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Leave-last-out: for each history, the model's top 10 after all its items but the last, scored against the
    last. Users whose last item the model cannot return, or with no earlier item it knows, are counted as skipped."""
    if model.config.task != "recommendation":
        raise ConfigError("this model is a retriever, not a recommender")
    histories, targets = [], []
    for _, items in users:
        earlier, last = list(items[:-1]), items[-1]
        if last in model.trie and any(item in model.trie for item in earlier):
            histories.append(earlier)
            targets.append(last)
    if not histories:
        raise RecommenderError(
            f"none of the {len(users)} histories has a last item the model can return after an item it knows"
        )
    metrics = model.evaluate_recommendation(histories, targets, progress=progress, exclude_seen=exclude_seen)
    scores = {name: value for name, value in metrics.items() if name != "queries"}  # a ranking metric's count
    return {
        **scores,
        "users": len(histories),
        "skipped_users": len(users) - len(histories),
        "exclude_seen": exclude_seen,
    }
