"""Options of the LMIndexer method, and the ``fast`` / ``default`` presets that fill the ones a user leaves out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmindexer.indexers.base import IndexerConfig

PACKAGED_BACKBONE = "all-MiniLM-L6-v2"
TINY_BACKBONE = "tiny-random"

# A preset only supplies values the user did not give; the snapshot records the resolved options.
PRESETS: dict[str, dict[str, Any]] = {
    # Frozen encoder whose token states are computed once and cached: the CPU-friendly configuration.
    "fast": {
        "max_length": 64,
        "train_encoder": False,
        "batch_size": 64,
        "nocode_steps": 60,
        "quantised_steps": 90,
        "learning_rate": 1e-3,
    },
    # The whole backbone is fine-tuned, as in the paper; meant for GPU workers.
    "default": {
        "max_length": 128,
        "train_encoder": True,
        "batch_size": 128,
        "nocode_steps": 1000,
        "quantised_steps": 2000,
        "learning_rate": 5e-4,
    },
}


class LMIndexerConfig(IndexerConfig):
    """A seq2seq LM that writes an item's semantic ID one code at a time; trained self-supervised."""

    preset: Literal["fast", "default"] = Field("fast", description="fills every training option left unset")
    backbone: str = Field(
        PACKAGED_BACKBONE,
        description=(
            "seq2seq backbone: the packaged all-MiniLM-L6-v2 (warm-started encoder-decoder), 'tiny-random' (tests), "
            "or a T5/BART/encoder-decoder model as a hub id, a local directory or an s3:// prefix"
        ),
    )
    decoder_layers: int = Field(2, ge=1, le=24, description="decoder depth when the decoder is built from an encoder")
    max_length: int = Field(64, ge=8, le=4096, description="tokens of each item's text the encoder reads")
    train_encoder: bool = Field(False, description="fine-tune the encoder (else it is frozen and its states cached)")
    batch_size: int = Field(64, ge=2, le=65536, description="items per training step (per process)")
    nocode_steps: int = Field(60, ge=0, description="steps per position before quantisation")
    quantised_steps: int = Field(90, ge=1, description="steps per position with the codebook in place")
    warm_steps: int | None = Field(None, ge=1, description="quantised steps per position of a warm retrain")
    learning_rate: float = Field(1e-3, gt=0, le=1)
    encoder_learning_rate: float = Field(5e-5, gt=0, le=1, description="used when train_encoder is on")
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_share: float = Field(0.1, ge=0, lt=1, description="share of each stage's steps spent warming up the lr")
    code_temperature: float = Field(0.1, gt=0, le=10, description="softmax temperature of code scores")
    contrastive_temperature: float = Field(0.05, gt=0, le=10)
    reconstruction_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(0.5, ge=0)
    commitment_weight: float = Field(1.0, ge=0)
    anchor_weight: float = Field(1.0, ge=0, description="weight of pulling states towards their code vectors")
    diversity_weight: float = Field(0.1, ge=0, description="weight of the even-codebook-use term (quantised stages)")
    mask_rate: list[float] | None = Field(
        None, description="reconstructor masking rate per position (one value for all; default 0.5 then 0.7)"
    )
    reconstruct_tokens: int = Field(32, ge=1, le=4096, description="token positions reconstructed per item and step")
    kmeans_iterations: int = Field(25, ge=1, le=1000)
    inference_batch_size: int = Field(64, ge=1, le=65536)
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
    def _mask_rates(self) -> LMIndexerConfig:
        rates = self.mask_rate
        if rates is None:
            rates = [0.5] + [0.7] * (self.levels - 1)
        elif len(rates) == 1:
            rates = rates * self.levels
        elif len(rates) != self.levels:
            raise ValueError(f"mask_rate has {len(rates)} values but levels is {self.levels}")
        for rate in rates:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"each mask_rate must be in [0, 1), got {rate}")
        object.__setattr__(self, "mask_rate", list(rates))
        return self

    @property
    def stage_warm_steps(self) -> int:
        return self.warm_steps or max(1, self.quantised_steps // 2)

    def architecture(self) -> dict[str, Any]:
        """The options that shape the weights: a warm start needs them to match."""
        return {
            "backbone": self.backbone,
            "decoder_layers": self.decoder_layers,
            "levels": self.levels,
            "codebook_size": list(self.codebook_size),
        }
