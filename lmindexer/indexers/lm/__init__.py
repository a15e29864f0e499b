"""The LMIndexer method: a generative seq2seq LM that learns semantic IDs self-supervised."""

from lmindexer.indexers.lm.indexer import LMIndexer
from lmindexer.methods import PRESETS, LMIndexerConfig

__all__ = ["PRESETS", "LMIndexer", "LMIndexerConfig"]
