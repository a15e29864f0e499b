#!/usr/bin/env bash
# Offline checks of the Terraform in infra/ (no AWS account, no credentials, no registry needed):
#   1. terraform fmt -check -recursive
#   2. terraform init -backend=false (provider from a local plugin directory) + validate, for the root
#      configuration and every module under infra/modules/
#   3. an offline plan of every infra/environments/*.tfvars, checked by infra/policy_check.py
#      (public buckets, encryption, TLS, search domain hardening, wildcard IAM actions, ingress from anywhere,
#      GPU worker volume encryption, private Airflow UI)
#
# Usage: bash scripts/infra_check.sh [--no-plan]
#        bash scripts/infra_check.sh --plugin-dir     # print the provider plugin directory it would use
#
# The AWS provider is looked up in $TF_PLUGIN_DIR, then in Terraform's standard plugin directories, then anywhere
# on the machine (a directory holding registry.terraform.io/hashicorp/aws/5.x/<os_arch>/terraform-provider-aws*).
# Without one, `terraform init` downloads the provider from the registry.
#
# Exit status: 0 all checks passed; 1 a check failed; 3 terraform is not installed; 4 no provider found with
# --plugin-dir.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA="$ROOT/infra"
PYTHON="${PYTHON:-python3}"

find_plugin_dir() {
  local candidates=() dir file
  [[ -n "${TF_PLUGIN_DIR:-}" ]] && candidates+=("$TF_PLUGIN_DIR")
  candidates+=(
    "$ROOT/infra/terraform.d/plugins"
    "${HOME:-/root}/.terraform.d/plugins"
    "${XDG_DATA_HOME:-${HOME:-/root}/.local/share}/terraform/plugins"
    /usr/local/share/terraform/plugins
    /usr/share/terraform/plugins
  )
  for dir in "${candidates[@]}"; do
    if compgen -G "$dir/registry.terraform.io/hashicorp/aws/5.*/*/terraform-provider-aws*" >/dev/null; then
      echo "$dir"
      return 0
    fi
  done
  # Anywhere else: first the usual install roots (fast), then the whole machine.
  for dir in "/opt /usr/local /srv ${HOME:-/root}" "/"; do
    # shellcheck disable=SC2086
    file="$(find $dir -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o \
      -type f -name 'terraform-provider-aws*' -path '*/registry.terraform.io/hashicorp/aws/5.*' -print 2>/dev/null |
      sort -V | tail -n 1)"
    if [[ -n "$file" ]]; then
      echo "${file%%/registry.terraform.io/*}"
      return 0
    fi
  done
  return 1
}

if [[ "${1:-}" == "--plugin-dir" ]]; then
  find_plugin_dir || { echo "no AWS provider 5.x plugin directory found (set TF_PLUGIN_DIR)" >&2; exit 4; }
  exit 0
fi

RUN_PLAN=1
case "${1:-}" in
  "") ;;
  --no-plan) RUN_PLAN=0 ;;
  *) echo "usage: $0 [--no-plan | --plugin-dir]" >&2; exit 2 ;;
esac

TERRAFORM="${TERRAFORM:-$(command -v terraform || true)}"
if [[ -z "$TERRAFORM" ]]; then
  echo "infra-check: terraform is not installed (https://developer.hashicorp.com/terraform/install)" >&2
  exit 3
fi

# Offline and quiet: no version checkpoint, no prompts, no stale CLI config.
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -f "$TF_CLI_CONFIG_FILE" ]]; then
  unset TF_CLI_CONFIG_FILE
fi
unset TF_WORKSPACE

if PLUGIN_DIR="$(find_plugin_dir)"; then
  INIT_SOURCE=(-plugin-dir="$PLUGIN_DIR")
  echo "infra-check: $("$TERRAFORM" version | head -n 1), AWS provider from $PLUGIN_DIR"
else
  INIT_SOURCE=()
  echo "infra-check: $("$TERRAFORM" version | head -n 1), no local AWS provider: init uses the registry"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/infra-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# A copy of infra/ without local state, caches or overrides, so checks never touch the working tree.
copy_infra() {
  local dest="$1"
  mkdir -p "$dest"
  tar -C "$INFRA" --exclude='.terraform' --exclude='*.tfstate*' --exclude='*_override.tf' \
    --exclude='*_override.tf.json' --exclude='.terraform.lock.hcl' -cf - . | tar -C "$dest" -xf -
}

# Run a terraform command; show its output only when it fails.
tf() {
  local dir="$1"
  shift
  local out
  if ! out="$("$TERRAFORM" -chdir="$dir" "$@" -no-color 2>&1)"; then
    echo "$out" >&2
    return 1
  fi
}

failed=0

echo "== terraform fmt -check -recursive"
if ! "$TERRAFORM" fmt -check -recursive -diff -no-color "$INFRA"; then
  echo "FAIL fmt: run 'terraform fmt -recursive infra'" >&2
  failed=1
fi
if [[ -d "$ROOT/tests/infra/fixtures" ]] && ! "$TERRAFORM" fmt -check -recursive -diff -no-color "$ROOT/tests/infra/fixtures"; then
  echo "FAIL fmt: run 'terraform fmt -recursive tests/infra/fixtures'" >&2
  failed=1
fi

echo "== terraform init -backend=false + validate"
copy_infra "$WORK/validate"
for dir in "$WORK/validate" "$WORK"/validate/modules/*/; do
  dir="${dir%/}"
  name="infra${dir#"$WORK/validate"}"
  if tf "$dir" init -backend=false "${INIT_SOURCE[@]}" && tf "$dir" validate; then
    echo "ok   $name"
  else
    echo "FAIL $name" >&2
    failed=1
  fi
done

if [[ "$RUN_PLAN" == 1 ]]; then
  echo "== offline plan + policy check"
  if ! command -v "$PYTHON" >/dev/null; then
    echo "FAIL policy: $PYTHON not found (set PYTHON)" >&2
    failed=1
  else
    for vars in "$INFRA"/environments/*.tfvars; do
      env_name="$(basename "$vars" .tfvars)"
      dir="$WORK/plan-$env_name"
      copy_infra "$dir"
      # Offline planning: fake credentials, no account lookups, local state. Never used for a real deployment.
      cat >"$dir/offline_override.tf" <<'EOF'
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
EOF
      if tf "$dir" init "${INIT_SOURCE[@]}" &&
        (
          unset AWS_PROFILE AWS_DEFAULT_PROFILE
          export AWS_EC2_METADATA_DISABLED=true
          tf "$dir" plan -refresh=false -lock=false -var-file="environments/$env_name.tfvars" -out=tfplan
        ) &&
        "$TERRAFORM" -chdir="$dir" show -json -no-color tfplan >"$dir/plan.json"; then
        echo "-- $env_name: policy check"
        if ! "$PYTHON" "$INFRA/policy_check.py" "$dir/plan.json"; then
          echo "FAIL policy ($env_name)" >&2
          failed=1
        fi
      else
        echo "FAIL plan ($env_name)" >&2
        failed=1
      fi
    done
  fi
fi

if [[ "$failed" != 0 ]]; then
  echo "infra-check: FAILED" >&2
  exit 1
fi
echo "infra-check: all checks passed"
