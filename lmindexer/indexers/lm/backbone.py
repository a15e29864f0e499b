"""The seq2seq backbone: a Hugging Face encoder-decoder with a uniform ``encode`` / ``decode`` surface.

Three sources, chosen by one config value:

* the packaged all-MiniLM-L6-v2 (offline default): a BERT2BERT ``EncoderDecoderModel`` whose encoder is the pretrained
  MiniLM and whose decoder is built from its first ``decoder_layers`` layers plus new cross-attention;
* ``tiny-random``: a small randomly initialised encoder-decoder with the same tokenizer, for tests;
* any T5 / BART / encoder-decoder checkpoint as a hub id, a local directory or an ``s3://`` prefix.

A snapshot never needs the original source again: it stores the model config (JSON) and the tokenizer files, and the
architecture is rebuilt from them before the snapshot's weights are loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmindexer.cache import cache_root
from lmindexer.embeddings import resolve_encoder
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.indexers.lm.decoding import (
    CachedDecoding,
    IncrementalDecoder,
    SharedMemoryDecoding,
    decode_blocks,
    shares_memory,
)
from lmindexer.methods import PACKAGED_ENCODER
from lmindexer.storage.s3 import is_s3_uri

TOKENIZER_DIR = "tokenizer"
PACKAGED_BACKBONE_ALIAS = PACKAGED_ENCODER
PACKAGED_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
TINY_DIMENSIONS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def local_source(name: str) -> str:
    """A directory for an ``s3://`` backbone (downloaded once into the cache), otherwise ``name`` unchanged."""
    if not is_s3_uri(name):
        return name
    from lmindexer.storage.s3 import download_prefix

    target = cache_root() / "backbones" / hashlib.sha256(name.encode()).hexdigest()[:16]
    if (target / "config.json").is_file():
        return str(target)
    # Downloaded beside the cache entry and renamed into place once complete: a download that dies half-way
    # must not leave a directory that later runs take for the whole backbone.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        download_prefix(name, staging)
        if not (staging / "config.json").is_file():
            raise ConfigError(f"backbone {name} has no config.json")
        if target.exists():
            shutil.rmtree(target)  # an incomplete copy left by an earlier release
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same download first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


class Seq2SeqBackbone(nn.Module):
    """Wraps a Hugging Face seq2seq model; only its encoder and decoder stacks are used."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.hidden_size = int(getattr(config, "d_model", None) or config.decoder.hidden_size)
        encoder_width = int(getattr(config, "d_model", None) or config.encoder.hidden_size)
        if encoder_width != self.hidden_size:
            raise ConfigError(
                f"backbone encoder width {encoder_width} differs from its decoder width {self.hidden_size}"
            )
        heads = getattr(config, "num_heads", None) or getattr(config, "decoder_attention_heads", None)
        self.num_heads = int(heads or config.decoder.num_attention_heads)
        if len(tokenizer) < 2:
            raise ConfigError("the backbone's tokenizer has an empty vocabulary")

    @property
    def encoder_module(self) -> nn.Module:
        return self.model.get_encoder()

    @property
    def decoder_module(self) -> nn.Module:
        """The decoder's stack of layers, which returns hidden states (EncoderDecoderModel's decoder carries an LM
        head; this is the stack underneath)."""
        decoder = self.model.get_decoder()
        return getattr(decoder, "base_model", decoder)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.encoder_module.get_input_embeddings()

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder_module.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder_module.parameters())

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder_module(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def decode(self, inputs_embeds: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        out = self.decoder_module(
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            use_cache=False,
        )
        return out.last_hidden_state

    def decode_blocks(self, inputs_embeds: torch.Tensor, memory: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """States (B, T, n, d) of ``T`` prefixes per source in one pass, prefix ``t`` attending the memory positions
        ``visible[:, t]`` allows (see :func:`lmindexer.indexers.lm.decoding.decode_blocks`); BERT-style decoders."""
        if not shares_memory(self.decoder_module):
            raise ConfigError(
                "training every next-item step of a history in one pass (sequence_training) needs a BERT-style "
                "decoder (the packaged and tiny backbones); this backbone's decoder is "
                f"{type(self.decoder_module).__name__}"
            )
        return decode_blocks(self.decoder_module, inputs_embeds, memory, visible)

    def incremental_decoder(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, *, shared_memory: bool = True
    ) -> IncrementalDecoder:
        """A decoder that extends many prefixes per source one position at a time (see
        :mod:`lmindexer.indexers.lm.decoding`): with one copy of each source's cross-attention keys and values where
        the decoder is BERT-style and ``shared_memory`` holds, else through Hugging Face's cache."""
        if shared_memory and shares_memory(self.decoder_module):
            return SharedMemoryDecoding(self.decoder_module, memory, memory_mask)
        return CachedDecoding(self.decoder_module, memory, memory_mask)

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    # -- persistence ------------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def save_tokenizer(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


def load_tokenizer(location: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the tokenizer of backbone {location!r}: {first_line(exc)}") from exc
    if len(tokenizer) < 2:
        # transformers builds an empty tokenizer for some bad paths instead of failing.
        raise ConfigError(f"the tokenizer loaded from {location!r} has an empty vocabulary")
    return tokenizer


def _bert2bert(location: str, decoder_layers: int) -> nn.Module:
    from transformers import EncoderDecoderModel

    return EncoderDecoderModel.from_encoder_decoder_pretrained(
        location, location, decoder_num_hidden_layers=decoder_layers
    )


def _tiny(vocab_size: int, decoder_layers: int, seed: int) -> nn.Module:
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    encoder = BertConfig(vocab_size=vocab_size, max_position_embeddings=512, **TINY_DIMENSIONS)
    decoder = BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=512,
        is_decoder=True,
        add_cross_attention=True,
        **{**TINY_DIMENSIONS, "num_hidden_layers": decoder_layers},
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))


def load_backbone(name: str, *, decoder_layers: int, seed: int) -> Seq2SeqBackbone:
    """Build the backbone a config names, with pretrained weights where the source has them."""
    quiet_transformers()
    lowered = name.lower()
    if lowered in PACKAGED_NAMES:
        location = resolve_encoder(PACKAGED_BACKBONE_ALIAS)
        return Seq2SeqBackbone(_bert2bert(location, decoder_layers), load_tokenizer(location))
    if lowered == "tiny-random":
        location = resolve_encoder(PACKAGED_BACKBONE_ALIAS)
        tokenizer = load_tokenizer(location)
        return Seq2SeqBackbone(_tiny(len(tokenizer), decoder_layers, seed), tokenizer)
    location = local_source(name)
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load backbone {name!r}: {first_line(exc)}") from exc
    if not getattr(config, "is_encoder_decoder", False):
        # A bare encoder checkpoint (BERT-like): warm-start an encoder-decoder from it.
        try:
            return Seq2SeqBackbone(_bert2bert(location, decoder_layers), load_tokenizer(location))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"backbone {name!r} is not a seq2seq model: {first_line(exc)}") from exc
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load backbone {name!r}: {first_line(exc)}") from exc
    return Seq2SeqBackbone(model, load_tokenizer(location))


def snapshot_tokenizer(directory: Path) -> Any:
    """The tokenizer a snapshot stores in its ``tokenizer/`` directory."""
    tokenizer_dir = directory / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise SnapshotError(f"snapshot {directory} has no {TOKENIZER_DIR}/ directory")
    try:
        tokenizer = load_tokenizer(str(tokenizer_dir))
    except ConfigError as exc:
        raise SnapshotError(str(exc)) from exc
    return tokenizer


def backbone_from_snapshot(directory: Path, model_config: dict[str, Any]) -> Seq2SeqBackbone:
    """The backbone's architecture (randomly initialised) and tokenizer as a snapshot recorded them."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config_values = dict(model_config)
    model_type = config_values.pop("model_type", None)
    if not model_type:
        raise SnapshotError(f"snapshot {directory} does not record its backbone's model type")
    try:
        config = AutoConfig.for_model(model_type, **config_values)
        model = AutoModelForSeq2SeqLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"cannot rebuild the backbone of snapshot {directory}: {first_line(exc)}") from exc
    return Seq2SeqBackbone(model, snapshot_tokenizer(directory))
