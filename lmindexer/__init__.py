"""LMIndexer platform: learned semantic IDs for catalogue items."""

__version__ = "0.1.0"
