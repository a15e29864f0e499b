"""The indexer methods and their options, declared without the model code.

A pipeline config names a method and gives its options; they are validated here, when the config is loaded, so a bad
option (a codebook size of 1, a preset that does not exist) is refused before any task runs, not inside the training
task on a GPU worker. Nothing here imports torch: an Airflow task that only validates or publishes loads this module
and never the model stack. :mod:`lmindexer.indexers` registers one implementation per method, each with the option
class named here, and refuses to load if the two differ.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lmindexer.errors import ConfigError
from lmindexer.options import parse_config
from lmindexer.precision import PRECISION_DESCRIPTION, InferencePrecision
from lmindexer.text import DEFAULT_TEMPLATE, TextTemplate

MAX_LEVELS = 8
MAX_CODEBOOK_SIZE = 65536
# The sentence encoder packaged with the platform (DESIGN.md §6): the baselines' frozen encoder and the LM's backbone.
PACKAGED_ENCODER = "all-MiniLM-L6-v2"
TINY_BACKBONE = "tiny-random"
# Accelerate's mixed-precision modes for training.
MixedPrecision = Literal["no", "fp16", "bf16"]


class IndexerConfig(BaseModel):
    """Options every indexer shares. ``codebook_size`` is one K for all levels or one per level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: int = Field(3, ge=1, le=MAX_LEVELS, description="number of learned code positions L")
    # validate_default: the default's one K, like a given one, is repeated for every level.
    codebook_size: list[int] = Field(
        default_factory=lambda: [32],
        validate_default=True,
        description="K per level (a single value applies to every level)",
    )
    text_template: str = Field(DEFAULT_TEMPLATE, description="how an item's fields become the indexed text")
    seed: int = Field(0, ge=0, description="random seed for fitting")
    last_level: Literal["balanced", "argmax"] = Field(
        "balanced",
        description=(
            "how the ID table picks the last code: 'balanced' gives each item the code it prefers most among those "
            "no other item under the same prefix holds (so items sharing a prefix get distinct IDs while codes are "
            "free, and a suffix only when a prefix holds more items than codes); 'argmax' always takes the item's "
            "own best code and separates items that share it by the suffix"
        ),
    )

    inference_precision: InferencePrecision = Field("auto", description=PRECISION_DESCRIPTION)

    @field_validator("codebook_size", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("text_template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        TextTemplate(value)
        return value

    @field_validator("codebook_size")
    @classmethod
    def _sizes_per_level(cls, sizes: list[int], info: ValidationInfo) -> list[int]:
        for size in sizes:
            if not 2 <= size <= MAX_CODEBOOK_SIZE:
                raise ValueError(f"each codebook size must be between 2 and {MAX_CODEBOOK_SIZE}, got {size}")
        levels = info.data.get("levels")
        if levels is None:
            return sizes  # levels itself is invalid, and says so
        if len(sizes) == 1:
            return sizes * levels
        if len(sizes) != levels:
            raise ValueError(f"{len(sizes)} values but levels is {levels}")
        return sizes


class EmbeddingIndexerConfig(IndexerConfig):
    """Options of the two-stage baselines: a frozen sentence encoder, then a quantiser over its embeddings."""

    encoder: str = Field(PACKAGED_ENCODER, description="frozen sentence encoder (name, local path or hub id)")
    max_length: int = Field(128, ge=8, le=4096, description="tokens per text given to the encoder")
    embed_batch_size: int = Field(64, ge=1, le=4096, description="texts per encoder forward pass")


class RQKMeansConfig(EmbeddingIndexerConfig):
    kmeans_iterations: int = Field(25, ge=1, le=1000, description="Lloyd iterations per level")


class HKMeansConfig(EmbeddingIndexerConfig):
    kmeans_iterations: int = Field(25, ge=1, le=1000, description="Lloyd iterations per node")


class RQVAEConfig(EmbeddingIndexerConfig):
    latent_dim: int = Field(32, ge=2, le=4096, description="width of the quantised latent")
    hidden_dims: list[int] = Field(default_factory=lambda: [512, 256, 128], description="encoder MLP widths")
    epochs: int = Field(150, ge=1, le=100_000, description="passes over the catalogue")
    batch_size: int = Field(256, ge=2, le=65_536, description="items per optimisation step")
    learning_rate: float = Field(1e-3, gt=0, le=10)
    commitment_weight: float = Field(0.25, ge=0, le=10, description="beta: pulls latents towards their codes")
    dropout: float = Field(0.0, ge=0, lt=1)
    kmeans_init: bool = Field(True, description="initialise codebooks by k-means on the first latents")
    restart_dead_codes: bool = Field(True, description="re-seed codes unused in an epoch from current residuals")

    @field_validator("hidden_dims")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(width < 1 for width in value):
            raise ValueError("hidden_dims must be positive widths")
        return value


# One configuration per preset, whatever the catalogue: the presets differ in how much of the encoder trains and for
# how long, which is a question of the hardware, not of the data. A preset only supplies values the user did not
# give; the snapshot records the resolved options.
PRESETS: dict[str, dict[str, Any]] = {
    # The encoder stays frozen (its states are computed once); the code writers train on top. Minutes on a CPU.
    "fast": {
        "max_length": 128,
        "train_layers": 0,
        "encoder_epochs": 0,
        "writer_epochs": 1,
        "batch_size": 128,
    },
    # The top two encoder layers train on the catalogue (the lower layers' outputs are computed once and cached),
    # then the writers: within an hour for ten thousand items on two CPU cores.
    "tuned": {
        "max_length": 64,
        "train_layers": 2,
        "encoder_epochs": 4,
        "writer_epochs": 1,
        "batch_size": 128,
    },
    # The whole encoder trains for many epochs, as in the paper: for GPU workers.
    "default": {
        "max_length": 128,
        "train_layers": -1,
        "encoder_epochs": 10,
        "writer_epochs": 2,
        "batch_size": 256,
    },
}


class LMIndexerConfig(IndexerConfig):
    """A language model that writes an item's semantic ID one code at a time, trained self-supervised."""

    preset: Literal["fast", "tuned", "default"] = Field("fast", description="fills every training option left unset")
    backbone: str = Field(
        PACKAGED_ENCODER,
        description=(
            "the text encoder: the packaged all-MiniLM-L6-v2, 'tiny-random' (tests), or a BERT-family or T5 model "
            "as a hub id, a local directory or an s3:// prefix"
        ),
    )
    max_length: int = Field(128, ge=8, le=4096, description="tokens of each item's text the encoder reads")
    train_layers: int = Field(
        0, ge=-1, description="top encoder layers that train (0: frozen; -1: all of them, embeddings included)"
    )
    encoder_epochs: int = Field(0, ge=0, description="passes over the catalogue that adapt the encoder")
    writer_epochs: int = Field(1, ge=0, description="passes over the catalogue per code position")
    batch_size: int = Field(128, ge=4, le=65536, description="items per training step (per process)")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="peak rate of the code writers and codebooks")
    encoder_learning_rate: float = Field(2e-5, gt=0, le=1, description="peak rate of the encoder layers that train")
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_share: float = Field(0.05, ge=0, lt=1, description="share of all training steps spent warming up")
    token_dropout: float = Field(
        0.2, ge=0, lt=1, description="share of an item's tokens each of its two training views leaves out"
    )
    contrastive_temperature: float = Field(0.05, gt=0, le=10)
    cluster_temperature: float = Field(0.1, gt=0, le=10, description="softmax temperature of code predictions")
    sinkhorn_epsilon: float = Field(0.05, gt=0, le=10, description="entropy of the balanced code targets")
    contrastive_weight: float = Field(1.0, ge=0)
    cluster_weight: float = Field(1.0, ge=0)
    reconstruction_weight: float = Field(1.0, ge=0, description="weight of rebuilding the item's content words")
    heldout_share: float = Field(
        0.1, gt=0, lt=0.5, description="items kept out of training to judge, without labels, whether a change helped"
    )
    keep_learned: Literal["if_criterion_improves", "always"] = Field(
        "if_criterion_improves",
        description=(
            "when a trained encoder or writer is kept: only if the label-free criterion improves (the presets), or "
            "always, whatever it says (an ablation that measures what the criterion's decisions are worth)"
        ),
    )
    kmeans_iterations: int = Field(25, ge=1, le=1000)
    inference_batch_size: int = Field(128, ge=1, le=65536)
    checkpoint_every: int = Field(100, ge=1, description="training steps between checkpoints")
    mixed_precision: MixedPrecision | None = Field(
        None, description="None follows accelerate launch's --mixed_precision"
    )
    device: Literal["auto", "cpu"] = Field("auto", description="'cpu' ignores an available GPU")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        preset = values.get("preset", "fast")
        if preset not in PRESETS:
            return values  # the Literal check names the valid presets
        return {**PRESETS[preset], **values}

    @field_validator("backbone")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("backbone must name a model")
        return value.strip()

    @model_validator(mode="after")
    def _encoder_training(self) -> LMIndexerConfig:
        if self.encoder_epochs and self.train_layers == 0:
            raise ValueError("encoder_epochs needs train_layers other than 0 (which layers to train)")
        return self

    @property
    def trains_encoder(self) -> bool:
        return self.train_layers != 0 and self.encoder_epochs > 0

    def architecture(self) -> dict[str, Any]:
        """The options that shape the weights: a warm start needs them to match."""
        return {"backbone": self.backbone, "levels": self.levels, "codebook_size": list(self.codebook_size)}


# The methods by name; one option class each.
INDEXER_CONFIGS: dict[str, type[IndexerConfig]] = {
    "hkmeans": HKMeansConfig,
    "lmindexer": LMIndexerConfig,
    "rq-kmeans": RQKMeansConfig,
    "rqvae": RQVAEConfig,
}
INDEXER_METHODS: tuple[str, ...] = tuple(INDEXER_CONFIGS)
DEFAULT_METHOD = "rq-kmeans"


def config_class(method: str) -> type[IndexerConfig]:
    try:
        return INDEXER_CONFIGS[method]
    except KeyError:
        raise ConfigError(f"unknown indexer method {method!r}; available: {', '.join(INDEXER_METHODS)}") from None


def indexer_options(method: str, values: Any) -> IndexerConfig:
    """``values`` (a mapping, or an option object) validated as the options of ``method``."""
    return parse_config(config_class(method), values, what=f"{method} indexer options")


__all__ = [
    "DEFAULT_METHOD",
    "INDEXER_CONFIGS",
    "INDEXER_METHODS",
    "MAX_CODEBOOK_SIZE",
    "MAX_LEVELS",
    "PACKAGED_ENCODER",
    "PRESETS",
    "TINY_BACKBONE",
    "EmbeddingIndexerConfig",
    "HKMeansConfig",
    "IndexerConfig",
    "LMIndexerConfig",
    "MixedPrecision",
    "RQKMeansConfig",
    "RQVAEConfig",
    "config_class",
    "indexer_options",
]
