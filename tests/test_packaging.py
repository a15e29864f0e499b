"""The package's extras match what each kind of worker imports: a worker installed without [train] and [serve]
runs the ingest steps, and the lock holds every declared dependency."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from lmindexer.storage.s3 import s3_client

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Distribution name -> the module it installs, where they differ.
MODULES = {"faiss-cpu": "faiss", "scikit-learn": "sklearn", "opensearch-py": "opensearchpy", "pyyaml": "yaml"}


def distribution(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def module(requirement: str) -> str:
    name = distribution(requirement)
    return MODULES.get(name, name.replace("-", "_"))


def extra_only(*extras: str) -> set[str]:
    """Modules of the packages only the given extras bring (not the base, not another extra's self-reference)."""
    names = {module(r) for extra in extras for r in PROJECT["optional-dependencies"][extra] if "lmindexer" not in r}
    return names - {module(r) for r in PROJECT["dependencies"]}


WORKER = """
import importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on this worker)")
        return None

sys.meta_path.insert(0, NotInstalled())

from lmindexer.options import parse_config
from lmindexer.pipeline import PipelineConfig, steps

values = {"base_uri": sys.argv[2], "method": "lmindexer", "indexer": {"preset": "tuned"}, "max_invalid_share": 0.5}
config = parse_config(PipelineConfig, values)
drops = steps.discover(config, "r1")
validated = steps.validate_drops(config, "r1", drops)
merged = steps.merge(config, "r1", validated)
decision = steps.decide(config, "r1", merged)
print(json.dumps({"drops": len(drops), "staged": validated[0].staged, "quarantined": validated[0].quarantined,
                  "items": merged.items, "mode": decision.mode,
                  "loaded": sorted(m for m in BLOCKED if m in sys.modules)}))
"""


def test_an_ingest_worker_without_the_model_stack_runs_discover_validate_merge_and_decide(s3_bucket, tmp_path):
    blocked = extra_only("train", "serve")
    assert {"torch", "transformers", "faiss", "fastapi"} <= blocked  # what the extras are for
    rows = ['{"item_id": "a", "title": "Red shoe"}', '{"item_id": "b", "title": "Blue hat"}', '{"item_id": ""}']
    s3_client().put_object(Bucket=s3_bucket, Key="incoming/drop.jsonl", Body=("\n".join(rows) + "\n").encode())
    completed = subprocess.run(
        [sys.executable, "-c", WORKER, ",".join(sorted(blocked)), f"s3://{s3_bucket}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = completed.stdout.strip().splitlines()[-1]
    assert report == ('{"drops": 1, "staged": 2, "quarantined": 1, "items": 2, "mode": "retrain", "loaded": []}')


def test_the_lock_pins_every_declared_dependency():
    locked = {
        distribution(line).replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "-", " "))
    }
    declared = list(PROJECT["dependencies"]) + [
        r for extra in PROJECT["optional-dependencies"].values() for r in extra if "lmindexer" not in r
    ]
    assert sorted({distribution(r) for r in declared} - locked) == []
