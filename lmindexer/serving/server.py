"""Running the HTTP API (``lmindexer serve``): the models loaded, torch's threads chosen, the search backend opened and
the application served with uvicorn, in this process or in several worker processes sharing one listening socket.

One process decodes one batch at a time per model, and torch spreads each batch over the process's threads. Small
matrix products (a decoder step, a short query) use threads poorly, and the server's own Python work (HTTP, the beam
search's bookkeeping) holds one interpreter lock; so on a machine with more than one core, several processes with
fewer threads each answer more requests than one process with all the threads (``--workers``; measured in
docs/serving.md). Each worker loads the models itself (memory grows with the workers) and batches the requests it
accepted; the kernel hands each new connection to one of them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmindexer.errors import ConfigError, UserError
from lmindexer.options import parse_config
from lmindexer.serving.limits import ServingLimits

PRECISIONS = ("auto", "fp32", "bf16")
# Where a worker process finds what to serve: the parent writes the ServeSpec as JSON before starting the workers.
SPEC_ENV = "LMINDEXER_SERVE_SPEC"
MAX_WORKERS = 64


class ServeSpec(BaseModel):
    """What ``lmindexer serve`` serves and how: the models (directories or s3://), the search backend's settings as
    given, the limits, the threads, the precision and the number of worker processes. Each worker reads it again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retriever: str | None = Field(None, description="generative retriever for /search")
    recommender: str | None = Field(None, description="generative recommender for /recommend")
    dense: str | None = Field(None, description="dense index for /search dense and hybrid")
    search: dict[str, Any] | None = Field(
        None,
        description="the search backend's settings as given (hosts, alias; the rest from LMINDEXER_SEARCH_*), "
        "read by load_search_config; None: no backend",
    )
    limits: ServingLimits = Field(default_factory=ServingLimits)
    threads: int | None = Field(None, ge=1, description="torch threads per model (default: a share of the cores)")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(None, description="default: each model's own")
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="serving processes, each with its own copy of the models")

    @property
    def computing(self) -> int:
        """Models that compute in one process: each has its own batcher and may run beside the others."""
        return (self.retriever is not None) + (self.recommender is not None) + (self.dense is not None)


def serving_threads(models: int, threads: int | None = None, *, workers: int = 1) -> int:
    """Set and return torch's threads for a process serving ``models`` models, one of ``workers`` such processes.
    Each model decodes one batch at a time, so up to ``models`` batches compute at once in each process: each gets
    ``threads`` if given, else its share of the cores (``LMINDEXER_THREADS``, else the process's cores divided by
    ``models`` times ``workers``; see :mod:`lmindexer.threads`)."""
    from lmindexer.threads import set_threads, threads_per_task

    chosen = threads if threads is not None else threads_per_task(max(1, models) * max(1, workers))
    set_threads(chosen)
    return chosen


def serving_limits(given: Mapping[str, Any]) -> ServingLimits:
    """The limits with the values given; a value of None keeps the default, declared once in ServingLimits."""
    return parse_config(ServingLimits, {k: v for k, v in given.items() if v is not None}, what="serving limits")


def serve_spec(values: Mapping[str, Any]) -> ServeSpec:
    """A :class:`ServeSpec` from options as given (None keeps a default), every problem reported at once and worded
    for ``lmindexer serve`` (checked before any model loads, which takes a while)."""
    precision = values.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"--precision must be auto, fp32 or bf16, not {precision!r}")
    given = {key: value for key, value in values.items() if value is not None}
    given["limits"] = serving_limits(given.get("limits", {}))
    return parse_config(ServeSpec, given, what="serving options")


def run_server(spec: ServeSpec, *, host: str, port: int, say: Callable[[str], None] = print) -> None:
    """Serve the API on ``host``:``port`` until the server stops: in this process when ``spec.workers`` is 1, else
    in that many worker processes under uvicorn's supervisor (which replaces a worker that dies, and stops
    everything when one fails to start). ``say`` gets the startup report, one line at a time."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if spec.workers > 1:
        _run_workers(spec, host=host, port=port, say=say)
        return
    import uvicorn

    with ExitStack() as stack:
        application = build_application(spec, stack, say)
        uvicorn.run(application, host=host, port=port, log_level="info")


def build_application(spec: ServeSpec, stack: ExitStack, say: Callable[[str], None]) -> FastAPI:
    """Load what ``spec`` names into this process and build the API over it; the search backend is closed with
    ``stack``."""
    from tqdm import tqdm

    from lmindexer.downstream.dense import DenseIndex
    from lmindexer.downstream.generative import GenerativeModel
    from lmindexer.search import load_search_config
    from lmindexer.serving.app import create_app

    # tqdm's first bar (even a disabled one, as searches make) creates a multiprocessing lock whose semaphore a worker
    # process leaves registered at exit ("leaked semaphore" warnings at every shutdown); a server shows no bars, so
    # a thread lock serves.
    tqdm.set_lock(threading.RLock())
    per_model = serving_threads(spec.computing, spec.threads, workers=spec.workers)
    retriever_model = GenerativeModel.load(spec.retriever) if spec.retriever else None
    recommender_model = GenerativeModel.load(spec.recommender) if spec.recommender else None
    dense_index = DenseIndex.load(spec.dense) if spec.dense else None
    models = {"retriever": retriever_model, "recommender": recommender_model}
    for model in models.values():
        if model is not None and spec.precision is not None:
            model.use_precision(spec.precision)
    # Read once the models have loaded, so that a bad setting is reported where `lmindexer serve` always reported it.
    backend = _open_backend(stack, load_search_config(spec.search), say) if spec.search is not None else None
    application = create_app(
        retriever=retriever_model,
        recommender=recommender_model,
        backend=backend,
        limits=spec.limits,
        dense=dense_index,
    )
    for role, model in models.items():
        if model is not None:
            say(
                f"{role}: {len(model.trie)} items, IDs of snapshot {model.vocabulary.snapshot_version}, "
                f"decoding in {model.precision}"
            )
    if dense_index is not None:
        encoder, built = dense_index.config.encoder, dense_index.built_at
        say(f"dense: {len(dense_index)} items embedded by {encoder}, built at {built}")
    if backend is not None:
        say(f"search: {backend.config.describe()}")
    say(f"torch threads per model: {per_model}")
    return application


def worker_application() -> FastAPI:
    """The application of one worker process (uvicorn's app factory): what the parent's :class:`ServeSpec` names,
    loaded here. A failure to load ends the worker with uvicorn's startup-failure status, which stops the parent
    instead of starting the same failing worker again and again."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        spec = ServeSpec.model_validate_json(os.environ[SPEC_ENV])
        stack = ExitStack()
        application = build_application(spec, stack, lambda line: print(f"[{os.getpid()}] {line}", flush=True))
    except (UserError, ValidationError, KeyError, OSError) as exc:
        print(f"error: serving process {os.getpid()} could not start: {exc}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
    application.state.serving.on_close(stack.close)
    return application


def _run_workers(spec: ServeSpec, *, host: str, port: int, say: Callable[[str], None]) -> None:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from lmindexer.search import load_search_config

    if spec.search is not None:
        load_search_config(spec.search)  # a bad setting stops here, once, not in every worker
    os.environ[SPEC_ENV] = spec.model_dump_json()
    config = uvicorn.Config(
        f"{__name__}:worker_application", factory=True, host=host, port=port, workers=spec.workers, log_level="info"
    )
    say(f"serving with {spec.workers} processes, each loading the models")
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = [process.pid for process in supervisor.processes if process.exitcode == STARTUP_FAILURE]
    if failed:
        raise UserError(f"serving process {failed[0]} could not start (its error is in the log above); stopped")


def _open_backend(stack: ExitStack, config: Any, say: Callable[[str], None]) -> Any:
    """A reader of the search alias, closed with ``stack``; an engine that cannot be reached yet is only reported."""
    from lmindexer.search.reader import SearchReader

    backend = stack.enter_context(SearchReader(config))
    try:
        backend.server_info()
    except UserError as exc:
        # The engine may come up later; until then only the endpoints that need it answer 503.
        say(f"warning: {exc}")
    return backend
