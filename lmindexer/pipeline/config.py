"""Configuration and storage layout of the reindex pipeline."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from lmindexer import layout
from lmindexer.layout import DEFAULT_MAX_PARTS
from lmindexer.methods import DEFAULT_METHOD, INDEXER_CONFIGS, INDEXER_METHODS, IndexerConfig, MixedPrecision
from lmindexer.options import describe_validation_error

Mode = Literal["auto", "apply", "retrain"]
_RUN_ID = re.compile(r"[^A-Za-z0-9._-]+")


def safe_run_id(run_id: str) -> str:
    """A run id usable in object keys and index names (Airflow's contain ':' and '+')."""
    cleaned = _RUN_ID.sub("-", run_id).strip("-.").lower()
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return cleaned[:120]


class QualityGates(BaseModel):
    """Checks a new ID table must pass before it is published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_level1_ami_ratio: float = Field(
        0.9, ge=0, le=10, description="a retrained snapshot's level-1 AMI must reach this share of the previous one's"
    )
    min_utilisation: float = Field(0.5, ge=0, le=1, description="codes used / K at every level, after a retrain")
    max_collision_rate: float = Field(1.0, ge=0, le=1, description="share of items sharing learned codes")


def normalise_prefix(value: str) -> str:
    """A storage prefix as ``name/``: no leading slash, exactly one trailing slash, never empty."""
    value = value.strip("/")
    if not value:
        raise ValueError("a prefix cannot be empty")
    return value + "/"


class PipelineConfig(BaseModel):
    """Where the pipeline reads and writes, which indexer it trains, and when it retrains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_uri: str = Field(description="root of the catalogue store: s3://bucket[/prefix] or a local directory")
    incoming_prefix: str = layout.INCOMING_PREFIX
    quarantine_prefix: str = layout.QUARANTINE_PREFIX
    staged_prefix: str = layout.STAGED_PREFIX
    models_prefix: str = layout.MODELS_PREFIX
    ids_prefix: str = layout.IDS_PREFIX
    catalog_prefix: str = layout.CATALOG_PREFIX
    state_prefix: str = layout.STATE_PREFIX
    method: str = Field(DEFAULT_METHOD, description="indexer method trained on a retrain")
    # Typed by the method (its class in lmindexer.methods) and validated with the rest of the config, so a bad option
    # fails at load, before any task runs; the training task receives these options already resolved.
    indexer: SerializeAsAny[IndexerConfig] = Field(
        default_factory=dict, validate_default=True, description="options of the indexer method"
    )
    label: str | None = Field("category", description="label for the quality gates (None: no label gates)")
    max_invalid_share: float = Field(0.05, ge=0, le=1, description="a drop with more invalid rows fails the run")
    retrain_added_share: float = Field(
        0.25, ge=0, description="retrain when items added since the last retrain exceed this share of it"
    )
    shard_size: int = Field(5000, ge=1, description="items per mapped assignment task")
    catalog_max_parts: int = Field(
        DEFAULT_MAX_PARTS, ge=1,
        description="parts a catalogue version may have before a run compacts it into one (1: every run)",
    )  # fmt: skip
    ids_max_parts: int = Field(
        DEFAULT_MAX_PARTS, ge=1,
        description="parts an ID table may have before a run compacts it into one (1: every run rewrites it whole)",
    )  # fmt: skip
    train_processes: int = Field(1, ge=1, description="processes for accelerate launch")
    mixed_precision: MixedPrecision = "no"
    gates: QualityGates = Field(default_factory=QualityGates)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in INDEXER_METHODS:
            raise ValueError(f"unknown indexer method {value!r}; available: {', '.join(INDEXER_METHODS)}")
        return value

    @field_validator("indexer", mode="before")
    @classmethod
    def _method_options(cls, value: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if method not in INDEXER_CONFIGS:
            return value  # the method's own check names the problem
        config_class = INDEXER_CONFIGS[method]
        if isinstance(value, config_class):
            return value
        if isinstance(value, IndexerConfig):
            raise ValueError(f"{type(value).__name__} given for method {method!r}, which takes {config_class.__name__}")
        if not isinstance(value, dict):
            raise ValueError(f"the options of {method!r} are a mapping, not {type(value).__name__}")
        try:
            return config_class.model_validate(value)
        except ValidationError as exc:
            raise ValueError(f"{method} options: {describe_validation_error(exc)}") from None

    @field_validator(
        "incoming_prefix",
        "quarantine_prefix",
        "staged_prefix",
        "models_prefix",
        "ids_prefix",
        "catalog_prefix",
        "state_prefix",
    )
    @classmethod
    def _prefix(cls, value: str) -> str:
        return normalise_prefix(value)

    def uri(self, *parts: str) -> str:
        return layout.join_uri(self.base_uri, *parts)
