from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmindexer.embeddings import EmbeddingCache, TextEncoder, resolve_encoder
from lmindexer.errors import ConfigError


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return TextEncoder(cache_path=tmp_path_factory.mktemp("emb") / "cache.sqlite", batch_size=8)


# Loads the encoder by name and embeds a sentence with the hub in offline mode and every socket refused, so any
# attempt to reach the network fails the run instead of quietly downloading.
_OFFLINE_EMBED = """
import json, socket, sys

def no_network(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = no_network
socket.create_connection = no_network
from lmindexer.embeddings import TextEncoder

encoder = TextEncoder(sys.argv[1], use_cache=False)
print(json.dumps(encoder.encode([sys.argv[2]])[0].tolist()))
"""


def test_packaged_encoder_resolves_offline(encoder):
    assert (Path(resolve_encoder("sentence-transformers/all-MiniLM-L6-v2")) / "config.json").is_file()
    sentence = "A cat sat on the mat."
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _OFFLINE_EMBED, "sentence-transformers/all-MiniLM-L6-v2", sentence],
        env=offline,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    vector = np.asarray(json.loads(completed.stdout.strip().splitlines()[-1]), dtype=np.float32)
    assert vector.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    np.testing.assert_allclose(vector, encoder.encode([sentence])[0], atol=1e-5)


def test_embeddings_are_normalised_and_meaningful(encoder):
    vectors = encoder.encode(["A cat sat on the mat.", "A kitten rested on the rug.", "Stock markets fell sharply."])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_cache_serves_repeated_texts(encoder, monkeypatch):
    texts = ["cached sentence one", "cached sentence two", "cached sentence one"]
    first = encoder.encode(texts)
    np.testing.assert_array_equal(first[0], first[2])

    def fail(*_args, **_kwargs):
        raise AssertionError("the encoder ran on a cached text")

    monkeypatch.setattr(encoder, "_embed", fail)
    np.testing.assert_array_equal(encoder.encode(texts[::-1]), first[::-1])


def test_batch_composition_does_not_change_embeddings_beyond_rounding(tmp_path):
    encoder = TextEncoder(use_cache=False, batch_size=2)
    texts = ["short", "a much longer sentence with many more words in it than the first", "medium length text"]
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_cache_ignores_vectors_of_another_width(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite", dim=4)
    cache.put_many([(b"k" * 32, np.ones(3, dtype=np.float32))])
    assert cache.get_many([b"k" * 32]) == {}


def test_bad_encoder_options(tmp_path):
    with pytest.raises(ConfigError, match="max_length"):
        TextEncoder(max_length=2)
    with pytest.raises(ConfigError, match="cannot load encoder"):
        TextEncoder(str(tmp_path / "no-such-model"), use_cache=False)


def test_bf16_embeddings_stay_close_to_fp32_and_are_cached_apart_from_them(tmp_path):
    """bf16 really changes the computation (a float32 vector from the shared cache would be bit-identical), and
    the two precisions never serve each other's cached vectors."""
    cache = tmp_path / "cache.sqlite"
    texts = ["A cat sat on the mat.", "Quarterly revenue grew by four percent.", "The river floods every spring."]
    fp32 = TextEncoder(cache_path=cache, precision="fp32").encode(texts)
    bf16_encoder = TextEncoder(cache_path=cache, precision="bf16")
    assert bf16_encoder.precision == "bf16"
    bf16 = bf16_encoder.encode(texts)
    assert bf16.dtype == np.float32
    assert not np.array_equal(fp32, bf16)
    assert float((fp32 * bf16).sum(axis=1).min()) > 0.999
    np.testing.assert_array_equal(TextEncoder(cache_path=cache, precision="fp32").encode(texts), fp32)
