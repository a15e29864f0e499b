from __future__ import annotations

import pytest
import torch

from lmindexer.indexers.lm.backbone import load_backbone
from lmindexer.indexers.lm.decoding import CachedDecoding, SharedMemoryDecoding, shares_memory
from tests.indexers.lm.test_lm_backbone import _tiny_t5


@pytest.fixture(scope="module")
def tiny():
    backbone = load_backbone("tiny-random", decoder_layers=2, seed=0)
    backbone.eval()
    return backbone


def _sources(backbone):
    """Three sources of different lengths, so that the shorter ones carry padding the decoder must not read."""
    batch = backbone.tokenize(["a bridge over the thames at night", "a moth", "red wool socks for winter"], 16)
    with torch.no_grad():
        memory = backbone.encode(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"]
    assert (mask == 0).any()
    return memory, mask


def _decode_beams(decoder, inputs: torch.Tensor, parents: list[torch.Tensor]) -> list[torch.Tensor]:
    """Steps ``decoder`` through positions: ``inputs[p]`` (rows_p, 1, d), ``parents[p]`` the rows of step p that the
    rows of step p+1 continue. Returns each step's states."""
    states = []
    with torch.no_grad():
        for position, step_inputs in enumerate(inputs):
            states.append(decoder.step(step_inputs))
            if position < len(parents):
                decoder.reorder(parents[position])
    return states


def _from_scratch(backbone, memory, mask, inputs, parents, owners):
    """The same rows' states computed from their whole prefix by ``decode`` (no cache)."""
    expected = []
    with torch.no_grad():
        histories = [inputs[0]]
        for position in range(len(inputs)):
            if position:
                index = parents[position - 1]
                histories = [h[index] for h in histories] + [inputs[position]]
            prefix = torch.cat(histories, dim=1)
            rows = owners[position]
            expected.append(backbone.decode(prefix, memory[rows], mask[rows])[:, -1])
    return expected


def test_rows_of_a_source_sharing_its_memory_decode_exactly_what_decoding_from_scratch_gives(tiny):
    """Three sources; one row each, then three rows each (continuing rows of their own source, one repeated as
    padding would be), then two each: every step's states equal decoding each row's whole prefix from scratch, and
    equal Hugging Face's cache path, which holds one copy of the memory per row."""
    torch.manual_seed(0)
    memory, mask = _sources(tiny)
    d = tiny.hidden_size
    widths = [1, 3, 2]
    inputs = [torch.randn(3 * width, 1, d) for width in widths]
    parents = [torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]), torch.tensor([2, 0, 3, 3, 8, 6])]
    owners = [torch.arange(3).repeat_interleave(width) for width in widths]
    expected = _from_scratch(tiny, memory, mask, inputs, parents, owners)

    shared = _decode_beams(tiny.incremental_decoder(memory, mask), inputs, parents)
    cached = _decode_beams(tiny.incremental_decoder(memory, mask, shared_memory=False), inputs, parents)
    for position in range(len(widths)):
        torch.testing.assert_close(shared[position], expected[position], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cached[position], expected[position], atol=1e-5, rtol=1e-4)


def test_the_bert_style_backbones_share_memory_and_others_take_the_cache(tiny, tmp_path):
    memory, mask = _sources(tiny)
    assert isinstance(tiny.incremental_decoder(memory, mask), SharedMemoryDecoding)
    assert isinstance(tiny.incremental_decoder(memory, mask, shared_memory=False), CachedDecoding)
    t5 = load_backbone(str(_tiny_t5(tmp_path / "t5")), decoder_layers=1, seed=0)
    assert not shares_memory(t5.decoder_module)
    batch = t5.tokenize(["a moth", "a bridge over the thames"], 16)
    with torch.no_grad():
        t5_memory = t5.encode(batch["input_ids"], batch["attention_mask"])
    assert isinstance(t5.incremental_decoder(t5_memory, batch["attention_mask"]), CachedDecoding)
    with pytest.raises(ValueError, match="BERT-style"):
        SharedMemoryDecoding(t5.decoder_module, t5_memory, batch["attention_mask"])


def test_rows_must_divide_evenly_among_the_sources(tiny):
    memory, mask = _sources(tiny)
    decoder = tiny.incremental_decoder(memory, mask)
    with pytest.raises(ValueError, match="same number of rows per source"):
        decoder.step(torch.randn(4, 1, tiny.hidden_size))
