"""Validating option mappings into typed (pydantic) configs, with one readable error listing every problem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lmindexer.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def describe_validation_error(exc: ValidationError) -> str:
    """``field: problem; other.field: problem`` from pydantic's report."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def parse_config(
    config_class: type[ConfigT],
    values: Mapping[str, Any] | BaseModel | None,
    *,
    what: str = "config",
    error: type[ConfigError] = ConfigError,
) -> ConfigT:
    """Validate ``values`` into ``config_class``; raises ``error`` naming every invalid option."""
    if isinstance(values, config_class):
        return values
    if isinstance(values, BaseModel):
        values = values.model_dump()
    try:
        return config_class.model_validate(dict(values or {}))
    except ValidationError as exc:
        raise error(f"invalid {what}: {describe_validation_error(exc)}") from None
