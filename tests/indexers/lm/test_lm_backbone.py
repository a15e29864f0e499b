from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmindexer.embeddings import resolve_encoder
from lmindexer.errors import ConfigError
from lmindexer.indexers.lm.backbone import load_backbone


def _tiny_t5(directory: Path) -> Path:
    """A randomly initialised T5 saved the way a hub checkpoint is, with the packaged WordPiece tokenizer."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("all-MiniLM-L6-v2"))
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0
    )
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return _tiny_t5(tmp_path_factory.mktemp("t5"))


def _run(backbone):
    batch = backbone.tokenize(["a bridge over the thames", "a moth"], 16)
    memory = backbone.encode(batch["input_ids"], batch["attention_mask"])
    states = backbone.decode(torch.randn(2, 3, backbone.hidden_size), memory, batch["attention_mask"])
    return memory, states


def test_the_packaged_encoder_warm_starts_both_sides():
    from transformers import AutoModel

    backbone = load_backbone("all-MiniLM-L6-v2", decoder_layers=2, seed=0)
    reference = AutoModel.from_pretrained(resolve_encoder("all-MiniLM-L6-v2"))
    encoder = dict(backbone.model.get_encoder().named_parameters())
    for name, value in reference.named_parameters():
        if name in encoder:
            torch.testing.assert_close(encoder[name], value)
    decoder = backbone.model.get_decoder().base_model
    assert decoder.config.num_hidden_layers == 2 and decoder.config.add_cross_attention
    torch.testing.assert_close(
        decoder.encoder.layer[0].attention.self.query.weight, reference.encoder.layer[0].attention.self.query.weight
    )
    memory, states = _run(backbone)
    assert memory.shape[-1] == states.shape[-1] == 384


def test_a_local_t5_directory_is_a_backbone(t5_dir):
    backbone = load_backbone(str(t5_dir), decoder_layers=2, seed=0)
    assert backbone.model.config.model_type == "t5" and backbone.hidden_size == 32
    _, states = _run(backbone)
    assert states.shape == (2, 3, 32)


def _counting_downloads(monkeypatch) -> list[str]:
    from lmindexer.storage import s3

    downloads: list[str] = []
    real = s3.download_prefix

    def download_prefix(uri, destination, **kwargs):
        downloads.append(uri)
        return real(uri, destination, **kwargs)

    monkeypatch.setattr(s3, "download_prefix", download_prefix)
    return downloads


def test_an_s3_backbone_is_downloaded_once_and_loaded(t5_dir, s3_bucket, monkeypatch):
    from lmindexer.storage.s3 import remove, upload_file

    location = f"s3://{s3_bucket}/models/t5"
    for path in t5_dir.iterdir():
        upload_file(path, f"{location}/{path.name}")
    downloads = _counting_downloads(monkeypatch)
    first = load_backbone(location, decoder_layers=2, seed=0)
    assert first.model.config.model_type == "t5"
    # Gone from S3, the backbone still loads: the second load reads the cached copy, not the bucket.
    for path in t5_dir.iterdir():
        remove(f"{location}/{path.name}")
    second = load_backbone(location, decoder_layers=2, seed=0)
    assert downloads == [location]
    reference = first.model.state_dict()
    for name, value in second.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)


def test_a_backbone_download_that_dies_half_way_is_not_taken_for_a_whole_one(t5_dir, s3_bucket, monkeypatch):
    from lmindexer.storage import s3

    location = f"s3://{s3_bucket}/models/t5-partial"
    for path in t5_dir.iterdir():
        s3.upload_file(path, f"{location}/{path.name}")
    real = s3.download_prefix

    def dies_after_the_config(uri, destination, **kwargs):
        real(uri, destination, **kwargs)
        for path in destination.iterdir():
            if path.name != "config.json":
                path.unlink()  # as if the process died before these arrived
        raise OSError("connection reset while downloading")

    monkeypatch.setattr(s3, "download_prefix", dies_after_the_config)
    with pytest.raises(OSError, match="connection reset"):
        load_backbone(location, decoder_layers=2, seed=0)
    monkeypatch.setattr(s3, "download_prefix", real)
    downloads = _counting_downloads(monkeypatch)
    backbone = load_backbone(location, decoder_layers=2, seed=0)
    assert downloads == [location], "the half-downloaded copy was used instead of downloading again"
    assert backbone.model.config.model_type == "t5"


def test_tiny_random_is_seeded():
    first = load_backbone("tiny-random", decoder_layers=1, seed=3).model.state_dict()
    second = load_backbone("tiny-random", decoder_layers=1, seed=3).model.state_dict()
    for name, value in first.items():
        torch.testing.assert_close(second[name], value)


@pytest.mark.parametrize("name", ["/no/such/backbone", "s3-bucket-without-scheme/x"])
def test_a_missing_backbone_fails_clearly(name):
    with pytest.raises(ConfigError, match="cannot load backbone"):
        load_backbone(name, decoder_layers=1, seed=0)
