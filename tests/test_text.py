from __future__ import annotations

import pytest

from lmindexer.catalog.items import Item
from lmindexer.errors import ConfigError
from lmindexer.text import DEFAULT_TEMPLATE, TextTemplate, text_hash


def test_default_template_drops_missing_segments():
    template = TextTemplate(DEFAULT_TEMPLATE)
    assert template.render(Item("a", title="Title", text="Body  text")) == "Title. Body text"
    assert template.render(Item("a", text="Body")) == "Body"
    assert template.render(Item("a", title="Only title")) == "Only title."


def test_attributes_and_lists():
    template = TextTemplate("{title}[ by {attributes.brand}][ ({attributes.tags})]")
    item = Item("a", title="Shirt", attributes={"brand": "Acme", "tags": ["linen", "summer"]})
    assert template.render(item) == "Shirt by Acme (linen, summer)"
    assert template.render(Item("b", title="Shirt")) == "Shirt"


@pytest.mark.parametrize(
    "bad",
    ["", "no placeholders", "{title.__class__}", "{unknown}", "[{title}", "{title}]", "{title"],
)
def test_bad_templates_fail_clearly(bad):
    with pytest.raises(ConfigError, match="template"):
        TextTemplate(bad)


def test_text_hash_is_stable():
    assert text_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
