"""One pipeline run in a process of its own that kills itself (SIGKILL: no cleanup, no ``finally``) at a chosen
point, so a test can rerun the run and check that nothing was lost or done twice.

    python -m testsupport.crashing_run CONFIG_JSON SEARCH_JSON RUN_ID POINT [MODE]

POINT is ``before-record:<step>`` (the step's side effects are done, its stored result is not: the worst moment to
die inside a step), ``after-record:<step>`` (the step is done and recorded, the next has not started) or
``commit:pointer-moved`` (``current.json`` is written, the drops are not yet recorded).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from lmindexer.pipeline import records
from lmindexer.pipeline.config import PipelineConfig
from lmindexer.pipeline.runner import run_pipeline
from lmindexer.storage.state import ProcessingState


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(config_json: str, search_json: str, run_id: str, point: str, mode: str = "auto") -> None:
    config = PipelineConfig(**json.loads(config_json))
    if point.startswith(("before-record:", "after-record:")):
        when, step = point.split(":", 1)
        write_json = records.write_json

        def write_then_maybe_die(uri: str, value: dict) -> None:
            recording = uri.endswith(f"/runs/{run_id}/{step}.json")
            if recording and when == "before-record":
                die()
            write_json(uri, value)
            if recording:
                die()

        records.write_json = write_then_maybe_die
    elif point == "commit:pointer-moved":
        ProcessingState.mark_processed = lambda *args, **kwargs: die()  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {point!r}")
    run_pipeline(config, json.loads(search_json), run_id, mode=mode)  # type: ignore[arg-type]
    raise SystemExit(f"the run finished without reaching {point}")


if __name__ == "__main__":
    main(*sys.argv[1:])
