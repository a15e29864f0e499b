"""Tiny LMIndexer options: a few seconds of training on the real sample catalogue, enough to learn something."""

TINY_LM = {
    "backbone": "tiny-random",
    "levels": 3,
    "codebook_size": 8,
    "batch_size": 32,
    "max_length": 48,
    "nocode_steps": 15,
    "quantised_steps": 25,
    "checkpoint_every": 1000,
}
