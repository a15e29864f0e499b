"""Incremental decoding of many prefixes per source: the decoder's states one new position at a time.

A constrained beam search over semantic IDs keeps up to ``beam_size`` prefixes (rows) per source and extends each by
one token per position. Two ways to decode them, chosen by :meth:`Seq2SeqBackbone.incremental_decoder`:

* :class:`SharedMemoryDecoding`, for BERT-style decoders (the packaged and tiny backbones): the memory's
  cross-attention keys and values are projected once per source and kept in one copy that all of its rows attend
  to in one batched product (the source's rows are the queries). Only the self-attention cache follows the beams
  when they are reordered. Decoding one token per row, attention over a per-row copy of the memory costs far more
  than the product itself (bf16 on CPU: ~14x for 20 rows over 32 tokens), and copying those copies at every reorder
  was 8-11% of a search.
* :class:`CachedDecoding`, for any other seq2seq decoder (T5, BART, ...): Hugging Face's encoder-decoder cache, one
  copy of the memory's keys and values per row, reordered with the rows.

Both take the rows laid out source-major with the same number of rows per source at each step (the beam search pads
a source that has fewer live beams), and both return exactly the states :meth:`Seq2SeqBackbone.decode` computes for
the whole prefix from scratch (the tests cross-check them).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class IncrementalDecoder(Protocol):
    def step(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """States (rows, d) of one new position per row, ``inputs_embeds`` (rows, 1, d) after the earlier ones."""
        ...

    def reorder(self, parents: torch.Tensor) -> None:
        """The rows of the next step: row ``i`` continues row ``parents[i]`` of this step (source-major layout)."""
        ...


class CachedDecoding:
    """Any decoder, through Hugging Face's encoder-decoder cache (one copy of the memory's keys and values per row)."""

    def __init__(self, decoder: nn.Module, memory: torch.Tensor, memory_mask: torch.Tensor) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.decoder = decoder
        self.memory, self.memory_mask = memory, memory_mask
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        out = self.decoder(
            inputs_embeds=inputs_embeds.to(self.memory.dtype),
            encoder_hidden_states=self.memory,
            encoder_attention_mask=self.memory_mask,
            cache=self.cache,
            use_cache=True,
        )
        return out.last_hidden_state[:, -1]

    def reorder(self, parents: torch.Tensor) -> None:
        self.cache.reorder_cache(parents)
        self.memory, self.memory_mask = self.memory[parents], self.memory_mask[parents]


def shares_memory(decoder: nn.Module) -> bool:
    """Whether ``decoder`` is a BERT-style stack :class:`SharedMemoryDecoding` can run (embeddings, then layers of
    self-attention, cross-attention and feed-forward with post-layer-norm residuals)."""
    from transformers.models.bert.modeling_bert import BertModel

    layers = getattr(getattr(decoder, "encoder", None), "layer", None)
    return (
        isinstance(decoder, BertModel)
        and bool(decoder.config.is_decoder)
        and layers is not None
        and all(hasattr(layer, "crossattention") for layer in layers)
    )


class SharedMemoryDecoding:
    """A BERT-style decoder's layers run step by step, each source's cross-attention keys and values held once.

    The layers' own modules do the projections, residuals and layer norms; only the attention products are written
    here, so that a source's rows can share its keys and values (grouped as the queries of one attention call)."""

    def __init__(self, decoder: nn.Module, memory: torch.Tensor, memory_mask: torch.Tensor) -> None:
        if not shares_memory(decoder):
            raise ValueError("shared-memory decoding needs a BERT-style decoder with cross-attention")
        self.decoder = decoder
        self.layers: list[Any] = list(decoder.encoder.layer)
        self.sources = memory.size(0)
        heads = self.layers[0].attention.self.num_attention_heads
        # (sources, 1, 1, S): True where a source token may be attended to, broadcast over heads and rows.
        self.memory_mask = memory_mask.bool()[:, None, None, :]
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in self.layers:
            attention = layer.crossattention.self
            self.cross.append((_heads(attention.key(memory), heads), _heads(attention.value(memory), heads)))
        self.dtype = memory.dtype
        self.past: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.length = 0

    def step(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        rows = inputs_embeds.size(0)
        if inputs_embeds.size(1) != 1 or rows % self.sources:
            raise ValueError(f"one new position per row, the same number of rows per source; got {inputs_embeds.shape}")
        per_source = rows // self.sources
        hidden = self.decoder.embeddings(inputs_embeds=inputs_embeds.to(self.dtype), cache_length=self.length)
        for index, layer in enumerate(self.layers):
            own = layer.attention.self
            heads = own.num_attention_heads
            query = _heads(own.query(hidden), heads)
            key, value = _heads(own.key(hidden), heads), _heads(own.value(hidden), heads)
            past = self.past[index]
            if past is not None:
                key, value = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
            self.past[index] = (key, value)
            # The new position sees every earlier one and itself: the causal mask has nothing to hide.
            attended = F.scaled_dot_product_attention(query, key, value)
            hidden = layer.attention.output(_merge(attended), hidden)

            cross = layer.crossattention.self
            # (rows, heads, 1, d) -> (sources, heads, rows per source, d): a source's rows query its keys together.
            query = cross.query(hidden).view(self.sources, per_source, heads, -1).transpose(1, 2)
            keys, values = self.cross[index]
            attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=self.memory_mask)
            attended = attended.transpose(1, 2).reshape(rows, 1, -1)
            hidden = layer.crossattention.output(attended, hidden)
            hidden = layer.output(layer.intermediate(hidden), hidden)
        self.length += 1
        return hidden[:, -1]

    def reorder(self, parents: torch.Tensor) -> None:
        self.past = [None if past is None else (past[0][parents], past[1][parents]) for past in self.past]


def decode_blocks(
    decoder: nn.Module, inputs_embeds: torch.Tensor, memory: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """A BERT-style decoder's states (B, T, n, d) for ``T`` prefixes per source at once, each of ``n`` positions
    (``inputs_embeds`` (B, T, n, d)), prefix ``t`` attending only the memory positions ``visible[b, t]`` (B, T, S)
    allows: every next-item step of a history in one pass, the states that decoding each prefix against only its
    visible memory gives (the tests cross-check them). The memory's keys and values are projected once per source.
    """
    if not shares_memory(decoder):
        raise ValueError("decoding blocks of prefixes needs a BERT-style decoder with cross-attention")
    sources, prefixes, length, hidden_size = inputs_embeds.shape
    rows = sources * prefixes
    hidden = decoder.embeddings(inputs_embeds=inputs_embeds.reshape(rows, length, hidden_size).to(memory.dtype))
    # (B, 1, T x n, S): each position of prefix t sees what prefix t sees; broadcast over heads.
    cross_mask = visible.bool()[:, None, :, None, :].expand(-1, -1, -1, length, -1).flatten(2, 3)
    for layer in decoder.encoder.layer:
        own = layer.attention.self
        heads = own.num_attention_heads
        query, key, value = (_heads(projection(hidden), heads) for projection in (own.query, own.key, own.value))
        attended = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, dropout_p=own.dropout.p if own.training else 0.0
        )
        hidden = layer.attention.output(_merge(attended), hidden)

        cross = layer.crossattention.self
        # (rows, n, d) -> (B, heads, T x n, d): a source's prefixes query its keys together.
        query = cross.query(hidden).view(sources, prefixes * length, heads, -1).transpose(1, 2)
        keys, values = _heads(cross.key(memory), heads), _heads(cross.value(memory), heads)
        attended = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=cross_mask, dropout_p=cross.dropout.p if cross.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(rows, length, -1)
        hidden = layer.crossattention.output(attended, hidden)
        hidden = layer.output(layer.intermediate(hidden), hidden)
    return hidden.view(sources, prefixes, length, -1)


def _heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, T, heads x d) -> (N, heads, T, d)."""
    return states.view(states.size(0), states.size(1), heads, -1).transpose(1, 2)


def _merge(attended: torch.Tensor) -> torch.Tensor:
    """(N, heads, T, d) -> (N, T, heads x d)."""
    return attended.transpose(1, 2).reshape(attended.size(0), attended.size(2), -1)
