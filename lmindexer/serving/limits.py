"""The bounds on what one request may ask for: every request limit of the HTTP API, declared once."""

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmindexer.downstream.fusion import PREFIX_BOOST_WEIGHT, RRF_K

# /items/{id}/similar needs no model, so no beam size bounds its k.
SIMILAR_MAX_K = 100


class ServingLimits(BaseModel):
    """Bounds on what one request may ask for: the one place each request limit is declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest request body, in bytes; a larger one is refused (413) before it is read. The default "
        "holds a /recommend body of 200 item_ids of 256 characters even at 4 bytes of UTF-8 each",
    )
    max_query_chars: int = Field(512, ge=1, le=100_000, description="longest /search query, in characters")
    max_history: int = Field(200, ge=1, le=100_000, description="most items a /recommend history may hold")
    max_k: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="most results a request may ask for; each model's beam size caps it further (None: the beam "
        f"size; /items/.../similar: {SIMILAR_MAX_K})",
    )
    default_k: int = Field(10, ge=1, le=1000, description="results returned when a request gives no k")
    # 100: the depth benchmarks/downstream.py fuses each ranking at, so the served fusions are the measured ones.
    blend_candidates: int = Field(
        100,
        ge=1,
        le=1000,
        description="mode=rrf: text-search hits fused with the beam; mode=hybrid: how deep the prefix-boosted text "
        "search and dense retrieval are fused",
    )
    rrf_k: int = Field(
        RRF_K, ge=1, le=10_000, description="mode=rrf: the reciprocal rank fusion constant, 1 / (rrf_k + rank)"
    )
    batch_max_size: int = Field(
        16, ge=1, le=1024, description="most concurrent requests for one model decoded as one batched beam search"
    )
    batch_max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="longest a request waits for others to share its batch (requests that queued while the previous "
        "batch ran join at once)",
    )
    max_pending_requests: int = Field(
        256, ge=1, le=100_000, description="requests that may wait for one model; one more is refused with 503"
    )
    prefix_boost_weight: float = Field(
        PREFIX_BOOST_WEIGHT,
        ge=0,
        le=100,
        description="mode=prefix-boost: what a document whose every ID prefix holds all of the beam's mass gains, in "
        "units of the query's best text score",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_k is not None and self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self

    def k_cap(self, beam_size: int | None) -> int:
        """The largest k an endpoint accepts: max_k, bounded by the beam size of the model answering it."""
        if beam_size is None:
            return self.max_k or SIMILAR_MAX_K
        return min(self.max_k or beam_size, beam_size)

    def default_k_within(self, cap: int) -> int:
        """The k of a request that gives none, for an endpoint that accepts at most ``cap``."""
        return min(self.default_k, cap)
