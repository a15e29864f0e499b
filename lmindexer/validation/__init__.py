"""Data validation gates: the input suite on catalogue drops and the output suite on ID tables.

Great Expectations is imported on first use, not when this package is imported, so a CLI command or a DAG file
that never validates does not pay for it.
"""

from lmindexer.validation.common import RunLayout, ValidationFailed
from lmindexer.validation.drop import DEFAULT_THRESHOLD, DropValidation, validate_drop
from lmindexer.validation.ids import OutputValidation, staged_item_ids, validate_ids

__all__ = [
    "DEFAULT_THRESHOLD",
    "DropValidation",
    "OutputValidation",
    "RunLayout",
    "ValidationFailed",
    "staged_item_ids",
    "validate_drop",
    "validate_ids",
]
