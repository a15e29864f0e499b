"""The LMIndexer method: a generative seq2seq LM that learns semantic IDs self-supervised."""

from lmindexer.indexers.lm.config import PRESETS, LMIndexerConfig
from lmindexer.indexers.lm.indexer import LMIndexer

__all__ = ["PRESETS", "LMIndexer", "LMIndexerConfig"]
