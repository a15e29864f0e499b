"""What the endpoints serve from: the models, the search backend and the limits of one application.

One :class:`ServingState` per application, on ``app.state.serving``; an endpoint gets it through the
:data:`ServingStateDependency` parameter type.

Each model has one worker thread that gathers the concurrent requests for it into one batched beam search
(:mod:`lmindexer.serving.batching`; bounded wait, bounded batch, bounded queue): one batched forward pass fills the
cores far better than requests taking turns, a Hugging Face fast tokenizer fails ("Already borrowed") when two
threads use it at once, and concurrent forward passes would only compete for the same CPU cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request

from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.errors import ConfigError
from lmindexer.search.reader import SearchReader
from lmindexer.serving.batching import MicroBatcher
from lmindexer.serving.limits import ServingLimits
from lmindexer.serving.schemas import DenseHealth, ModelHealth

# An item of a model's whole beam: (item_id, log-probability, semantic ID).
Ranked = list[tuple[str, float, str]]
# Dense retrieval's nearest items: (item_id, cosine similarity).
Scored = list[tuple[str, float]]

Component = TypeVar("Component")


@dataclass
class ServedModel:
    """A model with the bounds on k for it, the lock that serialises its use, and the batcher that feeds it."""

    model: GenerativeModel
    cap: int
    default_k: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: MicroBatcher[Any, Ranked] | None = None

    @classmethod
    def of(cls, model: GenerativeModel | None, task: str, role: str, limits: ServingLimits) -> ServedModel | None:
        """``model`` served as the ``role``, if given; it must be a ``task`` model."""
        if model is None:
            return None
        if model.config.task != task:
            raise ConfigError(f"the {role} must be a {task} model; the one given is a {model.config.task} model")
        cap = limits.k_cap(model.config.beam_size)
        served = cls(model, cap, limits.default_k_within(cap))
        served.batcher = MicroBatcher(
            served.search_batch if task == "retrieval" else served.recommend_batch,
            max_batch=limits.batch_max_size,
            max_wait_s=limits.batch_max_wait_ms / 1000,
            max_pending=limits.max_pending_requests,
            name=f"lmindexer-{role}",
        )
        return served

    def _with_sids(self, found: Sequence[Sequence[tuple[str, float]]]) -> list[Ranked]:
        return [[(item_id, score, self.model.sid_of(item_id) or "") for item_id, score in r] for r in found]

    def search_batch(self, texts: Sequence[str]) -> list[Ranked]:
        """The whole beam for each query: every k a request may ask for is a prefix of it."""
        with self.lock:
            return self._with_sids(self.model.search(list(texts), k=self.model.config.beam_size))

    def recommend_batch(self, requests: Sequence[tuple[tuple[str, ...], bool]]) -> list[Ranked]:
        """The whole beam for each (history, exclude_seen), the history's items left out where asked."""
        found: list[Ranked] = [[] for _ in requests]
        with self.lock:
            for exclude_seen in (False, True):
                rows = [n for n, (_, flag) in enumerate(requests) if flag is exclude_seen]
                if not rows:
                    continue
                histories = [list(requests[n][0]) for n in rows]
                beams = self.model.recommend(histories, k=self.model.config.beam_size, exclude_seen=exclude_seen)
                for n, ranked in zip(rows, self._with_sids(beams), strict=True):
                    found[n] = ranked
        return found

    def health(self) -> ModelHealth:
        vocabulary = self.model.vocabulary
        return ModelHealth(
            loaded=True,
            snapshot_version=vocabulary.snapshot_version,
            id_method=vocabulary.method,
            items=len(self.model.trie),
            beam_size=self.model.config.beam_size,
            max_k=self.cap,
        )


@dataclass
class ServedDense:
    """The dense index, the depth it is searched to, and the batcher that embeds concurrent queries together (its
    one worker thread is the index's only user: the tokenizer must not be used by two threads at once)."""

    index: DenseIndex
    depth: int
    batcher: MicroBatcher[str, Scored] | None = None

    @classmethod
    def of(cls, index: DenseIndex | None, limits: ServingLimits, cap: int) -> ServedDense | None:
        """``index`` searched deep enough for any k up to ``cap`` and for a fusion's candidates."""
        if index is None:
            return None
        served = cls(index, max(cap, limits.blend_candidates))
        served.batcher = MicroBatcher(
            served.search_batch,
            max_batch=limits.batch_max_size,
            max_wait_s=limits.batch_max_wait_ms / 1000,
            max_pending=limits.max_pending_requests,
            name="lmindexer-dense",
        )
        return served

    def search_batch(self, texts: Sequence[str]) -> list[Scored]:
        return self.index.search(list(texts), k=self.depth)

    def health(self) -> DenseHealth:
        return DenseHealth(
            loaded=True, items=len(self.index), encoder=self.index.config.encoder, built_at=self.index.built_at
        )


@dataclass(frozen=True)
class ServingState:
    """The components of one application (any of them may be missing) and the limits it applies."""

    limits: ServingLimits
    retriever: ServedModel | None
    recommender: ServedModel | None
    backend: SearchReader | None
    dense: ServedDense | None = None
    # Run after the batchers stop, at the application's shutdown (a worker process closes its search backend so).
    closers: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        *,
        retriever: GenerativeModel | None,
        recommender: GenerativeModel | None,
        backend: SearchReader | None,
        limits: ServingLimits,
        dense: DenseIndex | None = None,
    ) -> ServingState:
        served_retriever = ServedModel.of(retriever, "retrieval", "retriever", limits)
        return cls(
            limits=limits,
            retriever=served_retriever,
            recommender=ServedModel.of(recommender, "recommendation", "recommender", limits),
            backend=backend,
            # /search's k is bounded by the retriever's cap; dense retrieval is searched that deep at least.
            dense=ServedDense.of(dense, limits, cls.k_cap_of(limits, served_retriever)),
        )

    @staticmethod
    def k_cap_of(limits: ServingLimits, served: ServedModel | None) -> int:
        return served.cap if served else limits.k_cap(None)

    def k_cap(self, served: ServedModel | None) -> int:
        """The largest k of an endpoint answered by ``served``: its model's cap, else the cap with no model."""
        return self.k_cap_of(self.limits, served)

    def served_models(self) -> dict[str, ServedModel]:
        """The loaded models, by role."""
        served = {"retriever": self.retriever, "recommender": self.recommender}
        return {role: model for role, model in served.items() if model is not None}

    def batchers(self) -> dict[str, MicroBatcher[Any, Any]]:
        batchers: dict[str, MicroBatcher[Any, Any]] = {
            role: served.batcher for role, served in self.served_models().items() if served.batcher is not None
        }
        if self.dense is not None and self.dense.batcher is not None:
            batchers["dense"] = self.dense.batcher
        return batchers

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` at :meth:`close`, after the batch workers stop."""
        self.closers.append(closer)

    def close(self) -> None:
        """Stop the models' batch workers (the application's shutdown), then run what :meth:`on_close` added; the
        caller owns, and closes, the backend unless it added its closing here."""
        for batcher in self.batchers().values():
            batcher.close()
        for closer in self.closers:
            closer()


def required(component: Component | None, message: str) -> Component:
    """``component``, or a 503 with ``message`` when this server has none."""
    if component is None:
        raise HTTPException(status_code=503, detail=message)
    return component


async def _serving_state(request: Request) -> ServingState:
    # Async: a plain function would take a threadpool thread, which the endpoints waiting on a model need.
    return request.app.state.serving


ServingStateDependency = Annotated[ServingState, Depends(_serving_state)]
