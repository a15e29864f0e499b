"""The reindex pipeline: validated catalogue drops in, published semantic IDs out (see ``steps``)."""

from lmindexer.pipeline.config import PipelineConfig, QualityGates, safe_run_id

__all__ = ["PipelineConfig", "QualityGates", "safe_run_id"]
