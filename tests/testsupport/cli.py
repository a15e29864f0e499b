"""Running the ``lmindexer`` command line in-process, as the CLI tests do."""

from __future__ import annotations

from typing import Any


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``lmindexer *args`` through :func:`lmindexer.cli.main`: (exit code, stdout, stderr). Click exits on its own
    for ``--help`` and usage errors, and typer on success: those exits give their code too."""
    from lmindexer.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
