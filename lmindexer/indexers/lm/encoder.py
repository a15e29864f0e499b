"""The text encoder of the LMIndexer: a Hugging Face encoder whose layers can be run in two parts.

Training only the top layers on a CPU is affordable when the lower layers' outputs are computed once and cached:
``lower`` runs the embeddings and the frozen layers, ``upper`` the layers that train. BERT-family encoders (the
packaged all-MiniLM-L6-v2, ``tiny-random``, BERT/RoBERTa checkpoints) split anywhere; other encoders (the encoder
of a T5) run whole, so they train all layers or none.

Sources, chosen by one config value: the packaged all-MiniLM-L6-v2 (offline default); ``tiny-random``, a small
randomly initialised BERT with the same tokenizer (tests); any encoder or encoder-decoder checkpoint as a hub id, a
local directory or an ``s3://`` prefix (an encoder-decoder lends its encoder). A snapshot stores the model config and
the tokenizer files, so it never needs the source again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmindexer.embeddings import resolve_encoder
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.indexers.lm.backbone import (
    PACKAGED_BACKBONE_ALIAS,
    PACKAGED_NAMES,
    TINY_DIMENSIONS,
    TOKENIZER_DIR,
    first_line,
    load_tokenizer,
    local_source,
    quiet_transformers,
    snapshot_tokenizer,
)

_T5_TYPES = ("t5", "mt5", "umt5")


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, 1, T)`` additive attention mask: 0 where a token is present, a large negative number where not."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the present tokens' states, L2-normalised: the item's summary (a sentence embedding)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return F.normalize((states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0), dim=-1)


class EncoderStack(nn.Module):
    """An encoder, its tokenizer, and the split of its layers into a cached lower part and a trained upper part."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.hidden_size = int(getattr(config, "hidden_size", None) or config.d_model)
        if len(tokenizer) < 2:
            raise ConfigError("the encoder's tokenizer has an empty vocabulary")
        self.splittable = isinstance(self._layers, nn.ModuleList) and hasattr(model, "embeddings")

    @property
    def _layers(self) -> nn.ModuleList | None:
        # Looked up, not stored: a second reference would put every layer in the state dict twice.
        return getattr(getattr(self.model, "encoder", None), "layer", None)

    @property
    def num_layers(self) -> int:
        if self.splittable:
            return len(self._layers)
        return int(getattr(self.model.config, "num_layers", 0) or getattr(self.model.config, "num_hidden_layers", 1))

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def split_at(self, train_layers: int) -> int:
        """Index of the first layer that trains: ``num_layers`` when frozen, 0 when everything trains."""
        if train_layers == 0:
            return self.num_layers
        if train_layers < 0 or train_layers >= self.num_layers:
            return 0
        if not self.splittable:
            raise ConfigError(
                f"this encoder ({type(self.model).__name__}) runs whole: train_layers must be 0 (frozen) or -1 (all)"
            )
        return self.num_layers - train_layers

    def trainable_parameters(self, train_layers: int) -> list[nn.Parameter]:
        start = self.split_at(train_layers)
        if start >= self.num_layers:
            return []
        if start == 0:
            return list(self.model.parameters())
        return [p for layer in self._layers[start:] for p in layer.parameters()]

    def lower(self, input_ids: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
        """States after the embeddings and the layers below ``split`` (the input of the trained layers)."""
        if split == 0:
            return self.model.embeddings(input_ids=input_ids) if self.splittable else self.full(input_ids, mask)
        if not self.splittable:
            return self.full(input_ids, mask)
        states = self.model.embeddings(input_ids=input_ids)
        return self._run(states, mask, 0, split)

    def upper(self, states: torch.Tensor, mask: torch.Tensor, split: int, input_ids: torch.Tensor) -> torch.Tensor:
        """The token states at the top of the encoder, from ``lower``'s output."""
        if not self.splittable:
            return self.full(input_ids, mask) if split < self.num_layers else states
        return self._run(states, mask, split, self.num_layers)

    def full(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def _run(self, states: torch.Tensor, mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        additive = _additive_mask(mask, states.dtype)
        for layer in self._layers[start:end]:
            out = layer(states, attention_mask=additive)
            states = out[0] if isinstance(out, tuple) else out
        return states

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    # -- persistence ------------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def save_tokenizer(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


def _tiny_bert(vocab_size: int, seed: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, max_position_embeddings=512, **TINY_DIMENSIONS)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertModel(config, add_pooling_layer=False)


def load_encoder(name: str, *, seed: int) -> EncoderStack:
    """The encoder a config names, with pretrained weights where the source has them."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModel

    lowered = name.lower()
    if lowered in PACKAGED_NAMES:
        location = resolve_encoder(PACKAGED_BACKBONE_ALIAS)
        return EncoderStack(AutoModel.from_pretrained(location, add_pooling_layer=False), load_tokenizer(location))
    if lowered == "tiny-random":
        tokenizer = load_tokenizer(resolve_encoder(PACKAGED_BACKBONE_ALIAS))
        return EncoderStack(_tiny_bert(len(tokenizer), seed), tokenizer)
    location = local_source(name)
    try:
        config = AutoConfig.from_pretrained(location)
        if config.model_type in _T5_TYPES:
            from transformers import T5EncoderModel

            model = T5EncoderModel.from_pretrained(location)
        elif getattr(config, "is_encoder_decoder", False):
            raise ConfigError(f"encoder {name!r}: of the encoder-decoder models, the T5 family lends its encoder")
        elif config.model_type == "bert":
            model = AutoModel.from_pretrained(location, add_pooling_layer=False)
        else:
            model = AutoModel.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load encoder {name!r}: {first_line(exc)}") from exc
    return EncoderStack(model, load_tokenizer(location))


def encoder_from_snapshot(directory: Path, model_config: dict[str, Any]) -> EncoderStack:
    """The encoder's architecture (randomly initialised) and tokenizer as a snapshot recorded them."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModel

    values = dict(model_config)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise SnapshotError(f"snapshot {directory} does not record its encoder's model type")
    try:
        config = AutoConfig.for_model(model_type, **values)
        if model_type in _T5_TYPES:
            from transformers import T5EncoderModel

            model = T5EncoderModel(config)
        elif model_type == "bert":
            from transformers import BertModel

            model = BertModel(config, add_pooling_layer=False)
        else:
            model = AutoModel.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"cannot rebuild the encoder of snapshot {directory}: {first_line(exc)}") from exc
    return EncoderStack(model, snapshot_tokenizer(directory))
