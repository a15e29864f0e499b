"""Tiny LMIndexer options: a few seconds of training on the real sample catalogue, every phase included."""

TINY_LM = {
    "backbone": "tiny-random",
    "levels": 3,
    "codebook_size": 8,
    "batch_size": 32,
    "max_length": 48,
    "train_layers": 1,
    "encoder_epochs": 1,
    "writer_epochs": 1,
    "checkpoint_every": 1000,
}
