"""Running the HTTP API in this process (``lmindexer serve``): the models loaded, torch's threads chosen, the search
backend opened and the application served with uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.errors import ConfigError, UserError
from lmindexer.options import parse_config
from lmindexer.search.config import SearchConfig
from lmindexer.search.reader import SearchReader
from lmindexer.serving.app import create_app
from lmindexer.serving.limits import ServingLimits

PRECISIONS = ("auto", "fp32", "bf16")


def serving_threads(models: int, threads: int | None = None) -> int:
    """Set and return torch's threads for a process serving ``models`` models. Each model decodes one request at a
    time, under its own lock, so up to ``models`` requests compute at once: each gets ``threads`` if given, else its
    share of the cores (``LMINDEXER_THREADS``, else the process's cores divided by ``models``; see
    :mod:`lmindexer.threads`)."""
    from lmindexer.threads import set_threads, threads_per_task

    chosen = threads if threads is not None else threads_per_task(max(1, models))
    set_threads(chosen)
    return chosen


def serving_limits(given: Mapping[str, Any]) -> ServingLimits:
    """The limits with the values given; a value of None keeps the default, declared once in ServingLimits."""
    return parse_config(ServingLimits, {k: v for k, v in given.items() if v is not None}, what="serving limits")


def run_server(
    *,
    retriever: str | None,
    recommender: str | None,
    search_config: Callable[[], SearchConfig] | None,
    limits: Mapping[str, Any],
    host: str,
    port: int,
    threads: int | None = None,
    precision: str | None = None,
    dense: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the API on ``host``:``port`` until the server stops.

    - ``retriever``, ``recommender``: the generative models to load (directories or s3://); either may be None;
    - ``search_config``: reads the search backend's config, once the models have loaded, so that a bad setting is
      reported where ``lmindexer serve`` has always reported it; None: no backend;
    - ``limits``: :class:`ServingLimits` fields; a value of None keeps the default;
    - ``threads``: torch threads per model (default: :func:`serving_threads`'s share of the cores);
    - ``precision``: auto, fp32 or bf16 (default: each model's own);
    - ``dense``: a dense index (directory or s3://) for ``/search`` mode=dense and mode=hybrid; None: none;
    - ``say``: where the startup report goes, one line at a time.
    """
    import uvicorn

    # Checked before the models load, which takes a while; worded for ``lmindexer serve``, the one caller.
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"--precision must be auto, fp32 or bf16, not {precision!r}")
    chosen_limits = serving_limits(limits)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The dense index's query encoder is one more model computing beside the others.
    per_model = serving_threads((retriever is not None) + (recommender is not None) + (dense is not None), threads)
    retriever_model = GenerativeModel.load(retriever) if retriever else None
    recommender_model = GenerativeModel.load(recommender) if recommender else None
    dense_index = DenseIndex.load(dense) if dense else None
    models = {"retriever": retriever_model, "recommender": recommender_model}
    for model in models.values():
        if model is not None and precision is not None:
            model.use_precision(precision)
    with ExitStack() as stack:
        backend = _open_backend(stack, search_config(), say) if search_config else None
        application = create_app(
            retriever=retriever_model,
            recommender=recommender_model,
            backend=backend,
            limits=chosen_limits,
            dense=dense_index,
        )
        for role, model in models.items():
            if model is not None:
                say(
                    f"{role}: {len(model.trie)} items, IDs of snapshot {model.vocabulary.snapshot_version}, "
                    f"decoding in {model.precision}"
                )
        if dense_index is not None:
            say(
                f"dense: {len(dense_index)} items embedded by {dense_index.config.encoder}, built at "
                f"{dense_index.built_at}"
            )
        if backend is not None:
            say(f"search: {backend.config.describe()}")
        say(f"torch threads per model: {per_model}")
        uvicorn.run(application, host=host, port=port, log_level="info")


def _open_backend(stack: ExitStack, config: SearchConfig, say: Callable[[str], None]) -> SearchReader:
    """A reader of the search alias, closed with ``stack``; an engine that cannot be reached yet is only reported."""
    backend = stack.enter_context(SearchReader(config))
    try:
        backend.server_info()
    except UserError as exc:
        # The engine may come up later; until then only the endpoints that need it answer 503.
        say(f"warning: {exc}")
    return backend
