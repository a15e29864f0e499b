"""The text an indexer reads for an item, built from the item's fields by a template.

Template syntax: ``{field}`` inserts a field (``item_id``, ``title``, ``text``, ``category`` or ``attributes.KEY``);
a segment in square brackets is kept only when every field inside it is non-empty, so ``"[{title}. ]{text}"`` gives
``"Title. Body"``, ``"Body"`` without a title and ``"Title."`` without a body. Only these placeholders are recognised:
templates come from configuration files and must not be able to reach into Python objects (unlike ``str.format``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmindexer.errors import ConfigError

if TYPE_CHECKING:
    from lmindexer.catalog.items import Item

DEFAULT_TEMPLATE = "[{title}. ]{text}"

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_WHITESPACE = re.compile(r"\s+")


def _check_placeholder(name: str, template: str) -> None:
    from lmindexer.catalog.schema import STRING_FIELDS

    if name in STRING_FIELDS:
        return
    if name.startswith("attributes.") and re.fullmatch(r"attributes\.[A-Za-z0-9_\-]+", name):
        return
    allowed = ", ".join("{" + f + "}" for f in STRING_FIELDS)
    raise ConfigError(
        f"text template {template!r}: unknown placeholder {{{name}}}; use {allowed} or {{attributes.KEY}}"
    )


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_value_text(v) for v in value if v is not None)
    return str(value).strip()


@dataclass(frozen=True)
class TextTemplate:
    """Renders an item to the single string an indexer reads."""

    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise ConfigError("text template must be a non-empty string")
        stripped = _OPTIONAL.sub(lambda m: m.group(1), self.template)
        if "[" in stripped or "]" in stripped:
            raise ConfigError(f"text template {self.template!r}: unbalanced or nested [ ] segment")
        names = _PLACEHOLDER.findall(self.template)
        if not names:
            raise ConfigError(f"text template {self.template!r} has no {{field}} placeholder")
        for name in names:
            _check_placeholder(name, self.template)
        leftover = _PLACEHOLDER.sub("", stripped)
        if "{" in leftover or "}" in leftover:
            raise ConfigError(f"text template {self.template!r}: unbalanced braces")

    def render_fields(self, fields: Mapping[str, Any]) -> str:
        def lookup(name: str) -> str:
            if name.startswith("attributes."):
                attributes = fields.get("attributes") or {}
                return _value_text(attributes.get(name.split(".", 1)[1]))
            return _value_text(fields.get(name))

        def optional(match: re.Match[str]) -> str:
            segment = match.group(1)
            values = [lookup(n) for n in _PLACEHOLDER.findall(segment)]
            if not all(values):
                return ""
            return _PLACEHOLDER.sub(lambda m: lookup(m.group(1)), segment)

        rendered = _OPTIONAL.sub(optional, self.template)
        rendered = _PLACEHOLDER.sub(lambda m: lookup(m.group(1)), rendered)
        return _WHITESPACE.sub(" ", rendered).strip()

    def render(self, item: Item) -> str:
        return self.render_fields(
            {
                "item_id": item.item_id,
                "title": item.title,
                "text": item.text,
                "category": item.category,
                "attributes": item.attributes,
            }
        )


def text_hash(text: str) -> str:
    """Stable fingerprint of an item's indexed text (hex SHA-256 of its UTF-8 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
