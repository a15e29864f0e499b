"""Storage is the lower layer: the catalogue reads through it, so it must never import the catalogue back.

The imports are read from the source (``ast``) rather than from ``sys.modules``, so an import that only runs in one
branch, inside a function or under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lmindexer.storage

STORAGE_DIR = Path(lmindexer.storage.__file__).parent
SOURCE_ROOT = STORAGE_DIR.parent.parent
CATALOG_PACKAGE = "lmindexer.catalog"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports: relative imports resolved, and
    ``from package import name`` counted as ``package.name`` too, since the name may be a submodule."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)
    return imported


def _is_catalog(module: str) -> bool:
    return module == CATALOG_PACKAGE or module.startswith(CATALOG_PACKAGE + ".")


def test_the_storage_layer_does_not_import_the_catalogue_layer():
    modules = sorted(STORAGE_DIR.rglob("*.py"))
    assert modules, f"no modules found under {STORAGE_DIR}"
    upward: dict[str, list[str]] = {}
    for path in modules:
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        catalog_imports = sorted(m for m in _imported_modules(path.read_text(), package) if _is_catalog(m))
        if catalog_imports:
            upward[name] = catalog_imports
    assert upward == {}, f"storage modules import the catalogue layer: {upward}"


def test_the_import_reader_sees_every_spelling_of_a_catalogue_import():
    # The layering check is only as good as its reader: it must catch the spellings that avoid the full name.
    source = (
        "from ..catalog import readers\n"
        "from lmindexer import catalog\n"
        "import lmindexer.catalog.items\n"
        "def later():\n"
        "    from .s3 import is_s3_uri\n"
    )
    imported = _imported_modules(source, "lmindexer.storage")
    assert {"lmindexer.catalog.readers", "lmindexer.catalog", "lmindexer.catalog.items"} <= imported
    assert "lmindexer.storage.s3" in imported
    assert not any(_is_catalog(m) for m in _imported_modules("import lmindexer.catalogue_like\n", "lmindexer.storage"))
