"""`lmindexer search indexes` and `lmindexer search rollback` against the real local search server."""

from __future__ import annotations

from testsupport.cli import run_cli
from testsupport.search_docs import make_docs


def test_indexes_and_rollback(capsys, make_backend, search_server, alias):
    backend = make_backend()
    first = backend.publish_full(make_docs(5, version="v1"), "v1", "run-1").index
    second = backend.publish_full(make_docs(7, version="v2"), "v2", "run-2").index
    code, out, _ = run_cli(capsys, "search", "indexes", "--url", search_server.url, "--alias", alias)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"live  {second}") and "docs=7" in lines[0]
    assert "run=run-2" in lines[0]  # the run id is shown, since index names no longer hold it
    assert any(first in line for line in lines[1:])
    code, out, _ = run_cli(capsys, "search", "rollback", "--url", search_server.url, "--alias", alias)
    assert code == 0
    assert backend.live_index() == first and backend.count() == 5


def test_rollback_without_a_previous_index_is_a_one_line_error(capsys, make_backend, search_server, alias):
    make_backend().publish_full(make_docs(3), "v1", "run-1")
    code, _, err = run_cli(capsys, "search", "rollback", "--url", search_server.url, "--alias", alias)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
