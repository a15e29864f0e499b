"""Shared helpers for the Terraform tests: find terraform and the AWS provider, plan a configuration offline.

Everything runs in temporary copies of the configurations, so no .terraform directory, lock file or state is
ever written into the working tree. Tests skip (with the reason) only when terraform is not installed or no
AWS provider plugin directory can be found.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CHECK_SCRIPT = REPO / "scripts" / "infra_check.sh"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Fake credentials and no account lookups: enough for `terraform plan` of resources that do not exist yet.
OFFLINE_OVERRIDE = """\
terraform {
  backend "local" {}
}

provider "aws" {
  access_key                  = "offline-check"
  secret_key                  = "offline-check"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  allowed_account_ids         = null
}
"""


def terraform_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0", AWS_EC2_METADATA_DISABLED="true")
    for name in ("TF_WORKSPACE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    if env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).is_file():
        env.pop("TF_CLI_CONFIG_FILE")
    return env


@functools.cache
def terraform_binary() -> str | None:
    return shutil.which("terraform")


@functools.cache
def provider_plugin_dir() -> str | None:
    """The local plugin directory holding the AWS provider, as scripts/infra_check.sh finds it."""
    result = subprocess.run(
        ["bash", str(CHECK_SCRIPT), "--plugin-dir"], capture_output=True, text=True, timeout=300, check=False
    )
    path = result.stdout.strip()
    return path if result.returncode == 0 and path else None


def require_terraform() -> tuple[str, str]:
    """(terraform binary, plugin dir), or skip the test with the reason."""
    binary = terraform_binary()
    if binary is None:
        pytest.skip("terraform is not installed (not on PATH); the infra checks need Terraform >= 1.9")
    plugin_dir = provider_plugin_dir()
    if plugin_dir is None:
        pytest.skip(
            "no local AWS provider 5.x plugin directory found (set TF_PLUGIN_DIR to the directory above "
            "registry.terraform.io/)"
        )
    return binary, plugin_dir


def run_terraform(args: list[str], cwd: Path, timeout: int = 300) -> str:
    binary, _ = require_terraform()
    result = subprocess.run(
        [binary, *args, "-no-color"],
        cwd=cwd,
        env=terraform_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"terraform {' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def plan_offline(
    config: Path, workdir: Path, var_file: str | None = None, variables: dict[str, str] | None = None
) -> dict[str, Any]:
    """Copy `config` to `workdir`, plan it offline and return the plan JSON (`terraform show -json`); `variables`
    are passed as -var NAME=VALUE after the variable file."""
    _, plugin_dir = require_terraform()
    shutil.copytree(
        config,
        workdir,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "*_override.tf", ".terraform.lock.hcl"),
    )
    (workdir / "offline_override.tf").write_text(OFFLINE_OVERRIDE)
    run_terraform(["init", f"-plugin-dir={plugin_dir}"], workdir)
    plan_args = ["plan", "-refresh=false", "-lock=false", "-out=tfplan"]
    if var_file:
        plan_args.append(f"-var-file={var_file}")
    plan_args += [f"-var={name}={value}" for name, value in (variables or {}).items()]
    run_terraform(plan_args, workdir)
    return json.loads(run_terraform(["show", "-json", "tfplan"], workdir))


def _load_policy_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("infra_policy_check", INFRA / "policy_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def terraform_tools() -> tuple[str, str]:
    """(terraform binary, AWS provider plugin dir); skips the test with the reason when either is missing."""
    return require_terraform()


@pytest.fixture(scope="session")
def tf_env() -> dict[str, str]:
    """Environment for terraform subprocesses: offline, non-interactive, no stale CLI config or AWS profile."""
    return terraform_env()


@pytest.fixture(scope="session")
def policy_check() -> ModuleType:
    """infra/policy_check.py as a module."""
    return _load_policy_check()


@pytest.fixture(scope="session")
def planner(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """plan(config_dir, var_file=None, variables=None) -> plan JSON, in a fresh temporary copy."""

    def plan(config: Path, var_file: str | None = None, variables: dict[str, str] | None = None) -> dict[str, Any]:
        return plan_offline(config, tmp_path_factory.mktemp(config.name) / config.name, var_file, variables)

    return plan
