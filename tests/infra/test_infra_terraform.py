"""The Terraform configuration: `make infra-check` (fmt, offline init + validate of every configuration, offline
plan + policy check) and static conventions that need no Terraform at all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CHECK_SCRIPT = REPO / "scripts" / "infra_check.sh"
MODULES = sorted(p for p in (INFRA / "modules").iterdir() if p.is_dir())
CONFIGURATIONS = [INFRA, *MODULES]
TF_FILES = sorted(INFRA.rglob("*.tf"))


def _run_script(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK_SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- make infra-check ----------------------------------------------------------------------------------------------


def test_infra_check_passes(terraform_tools: tuple[str, str], tf_env: dict[str, str], policy_check) -> None:
    result = _run_script([], {**tf_env, "PYTHON": sys.executable})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for config in CONFIGURATIONS:
        assert f"ok   {config.relative_to(REPO)}" in output, f"{config} was not validated:\n{output}"
    for env in ("dev", "prod"):
        assert f"-- {env}: policy check" in output
    total = len(policy_check.CHECKS)
    assert output.count(f"{total}/{total} checks passed") == len(list((INFRA / "environments").glob("*.tfvars")))
    assert "infra-check: all checks passed" in output


def test_plugin_dir_is_searched_for(terraform_tools: tuple[str, str], tf_env: dict[str, str]) -> None:
    _, plugin_dir = terraform_tools
    assert (Path(plugin_dir) / "registry.terraform.io" / "hashicorp" / "aws").is_dir()
    # An explicit TF_PLUGIN_DIR wins; a wrong one falls back to searching.
    explicit = _run_script(["--plugin-dir"], {**tf_env, "TF_PLUGIN_DIR": plugin_dir})
    assert explicit.stdout.strip() == plugin_dir
    wrong = _run_script(["--plugin-dir"], {**tf_env, "TF_PLUGIN_DIR": "/nonexistent/plugins"})
    assert wrong.returncode == 0 and wrong.stdout.strip() == plugin_dir
    assert plugin_dir not in CHECK_SCRIPT.read_text(), "the plugin directory must be found, not hard-coded"


def test_infra_check_without_terraform_says_so(tmp_path: Path) -> None:
    # A PATH with bash and the usual tools but no terraform.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "mktemp", "find", "sort", "tail", "rm", "cat", "head"):
        for directory in ("/usr/bin", "/bin"):
            if (Path(directory) / tool).exists():
                (bin_dir / tool).symlink_to(Path(directory) / tool)
                break
    env = {k: v for k, v in os.environ.items() if k != "TERRAFORM"}
    env["PATH"] = str(bin_dir)
    result = subprocess.run(
        [str(bin_dir / "bash"), str(CHECK_SCRIPT), "--no-plan"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3
    assert "terraform is not installed" in result.stderr


# --- static conventions (no terraform needed) ------------------------------------------------------------------


def _blocks(text: str, kind: str) -> dict[str, str]:
    """Top-level HCL blocks `kind "label" ["label"] { ... }` -> body, keyed by the labels joined with ".";
    braces inside strings, interpolations and comments are skipped."""
    blocks: dict[str, str] = {}
    for match in re.finditer(rf'^{kind} "([^"]+)"(?: "([^"]+)")? {{', text, flags=re.MULTILINE):
        start = i = match.end()
        depth, stack = 1, []  # stack of contexts inside strings: "str" or "interp"
        while depth and i < len(text):
            ch = text[i]
            if stack and stack[-1] == "str":
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    stack.pop()
                elif text.startswith("${", i):
                    stack.append("interp")
                    i += 1
            elif ch == '"':
                stack.append("str")
            elif ch == "#" or text.startswith("//", i):
                i = text.find("\n", i)
            elif ch == "{":
                if stack:
                    stack.append("brace")
                else:
                    depth += 1
            elif ch == "}":
                if stack and stack[-1] in ("interp", "brace"):
                    stack.pop()
                else:
                    depth -= 1
            i += 1
        blocks[".".join(label for label in match.groups() if label)] = text[start : i - 1]
    return blocks


def _variables(config: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for tf in sorted(config.glob("*.tf")):
        found.update(_blocks(tf.read_text(), "variable"))
    return found


@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_variables_are_typed_described_and_validated(config: Path) -> None:
    variables = _variables(config)
    assert variables, f"no variables in {config}"
    for name, body in variables.items():
        assert re.search(r"^\s*type\s*=", body, re.MULTILINE), f"{config.name}: variable {name} has no type"
        assert re.search(r'^\s*description\s*=\s*"\S', body, re.MULTILINE), f"{config.name}: {name} undocumented"
    validated = [name for name, body in variables.items() if "validation {" in body]
    assert len(validated) >= 3, f"{config.name}: only {validated} have validation"


@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_outputs_are_described(config: Path) -> None:
    outputs: dict[str, str] = {}
    for tf in sorted(config.glob("*.tf")):
        outputs.update(_blocks(tf.read_text(), "output"))
    assert outputs
    for name, body in outputs.items():
        assert re.search(r'^\s*description\s*=\s*"\S', body, re.MULTILINE), f"{config.name}: output {name}"


def test_root_outputs_cover_the_airflow_connections() -> None:
    outputs = _blocks((INFRA / "outputs.tf").read_text(), "output")
    for name in (
        "airflow_connections",
        "airflow_variables",
        "catalogue_bucket",
        "artifact_bucket",
        "search_endpoint",
        "mwaa_environment_name",
        "gpu_job_queue",
        "gpu_job_definition",
        "indexer_image_repository",
    ):
        assert name in outputs


@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_provider_is_constrained_to_5x(config: Path) -> None:
    versions = (config / "versions.tf").read_text()
    assert re.search(r'source\s*=\s*"hashicorp/aws"', versions)
    assert re.search(r'version\s*=\s*"~> 5\.0"', versions)


def test_only_local_data_sources() -> None:
    """Planning must not call AWS: only data sources computed by the provider itself."""
    allowed = {"aws_iam_policy_document", "aws_partition"}
    for tf in TF_FILES:
        for kind in re.findall(r'^data "([^"]+)"', tf.read_text(), flags=re.MULTILINE):
            assert kind in allowed, f"{tf.relative_to(REPO)} reads data source {kind}"


def test_no_secrets_or_inline_credentials() -> None:
    pattern = re.compile(r"^\s*(password|master_user_password|secret_key|access_key|token)\s*=", re.MULTILINE)
    for tf in TF_FILES:
        assert not pattern.search(tf.read_text()), f"{tf.relative_to(REPO)} sets a credential"
    for tfvars in (INFRA / "environments").glob("*.tfvars"):
        assert not re.search(r"(?i)password|secret", tfvars.read_text()), tfvars


def test_policies_use_policy_documents() -> None:
    """Permission policies come from aws_iam_policy_document data sources, never hand-written JSON."""
    not_permissions = ("aws_ecr_lifecycle_policy.",)  # lifecycle rules, not a permissions policy
    attribute = re.compile(r"^\s*(policy|assume_role_policy|access_policies|policy_document)\s*=\s*(.+)$", re.MULTILINE)
    seen = 0
    for tf in TF_FILES:
        for address, body in _blocks(tf.read_text(), "resource").items():
            if address.startswith(not_permissions):
                continue
            for name, value in attribute.findall(body):
                seen += 1
                assert value.startswith("data.aws_iam_policy_document."), f"{tf.relative_to(REPO)} {address}.{name}"
    assert seen >= 10


def test_terraform_state_is_never_committed() -> None:
    ignored = (INFRA / ".gitignore").read_text().split()
    for pattern in (".terraform/", "*.tfstate", "*.tfstate.*", ".terraform.lock.hcl"):
        assert pattern in ignored
