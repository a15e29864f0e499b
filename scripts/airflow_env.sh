# shellcheck shell=bash
# Source this file to point the airflow CLI at this project:
#
#   source scripts/airflow_env.sh            # AIRFLOW_HOME=.airflow/ in the repository
#   source scripts/airflow_env.sh DIR        # AIRFLOW_HOME=DIR (the demo and the UI check use scratch homes)
#
# It sets: AIRFLOW_HOME (airflow.cfg, logs and a SQLite database live there), the project's dags/ and plugins/, no
# example DAGs, the venv's bin/ first on PATH (`airflow standalone` starts its components as `airflow ...` from PATH),
# and the API server on 127.0.0.1:${AIRFLOW__API__PORT:-8080} (a preset AIRFLOW__API__PORT/HOST wins), with task
# processes reporting to that same port.
# From a script, pass the directory explicitly: a bare `source` hands the script's own arguments to this file.

_lmindexer_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

mkdir -p "${1:-$_lmindexer_root/.airflow}"
export AIRFLOW_HOME
AIRFLOW_HOME="$(cd "${1:-$_lmindexer_root/.airflow}" && pwd)"
export AIRFLOW__CORE__DAGS_FOLDER="$_lmindexer_root/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$_lmindexer_root/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
# Task processes report to the API server; without this they assume port 8080.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"

case "$PATH" in
  "$_lmindexer_root/.venv/bin:"*) ;;
  *) export PATH="$_lmindexer_root/.venv/bin:$PATH" ;;
esac

unset _lmindexer_root
