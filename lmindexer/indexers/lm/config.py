"""Options of the LMIndexer method, and the presets that fill the ones a user leaves out.

One configuration per preset, whatever the catalogue: the presets differ in how much of the encoder trains and for
how long, which is a question of the hardware, not of the data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmindexer.indexers.base import IndexerConfig

PACKAGED_BACKBONE = "all-MiniLM-L6-v2"
TINY_BACKBONE = "tiny-random"

# A preset only supplies values the user did not give; the snapshot records the resolved options.
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
        PACKAGED_BACKBONE,
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
    kmeans_iterations: int = Field(25, ge=1, le=1000)
    inference_batch_size: int = Field(128, ge=1, le=65536)
    checkpoint_every: int = Field(100, ge=1, description="training steps between checkpoints")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
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
