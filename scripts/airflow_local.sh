#!/usr/bin/env bash
# Airflow on the embedded local stack, for working on the catalog_reindex DAG in the UI:
#
#  1. start the local stack (S3 + search) in .stack/ and take its environment,
#  2. migrate the SQLite database in .airflow/,
#  3. store the connections lmindexer_s3 and lmindexer_search in the database (replaced on every start),
#  4. set the Variable lmindexer_pipeline and create its bucket,
#  5. run `airflow standalone` until Ctrl-C (UI on http://127.0.0.1:${AIRFLOW__API__PORT:-8080}).
#
# Ctrl-C stops Airflow; the local stack is stopped whenever this script ends. The stack is in-memory, so every start
# begins with an empty bucket and an empty search node.
# Settings (environment): LMINDEXER_AIRFLOW_HOME (default .airflow), LMINDEXER_STACK_DIR (default .stack),
# LMINDEXER_BUCKET (default lmindexer-demo), AIRFLOW__API__PORT (default 8080), and any other AIRFLOW__* option,
# e.g. AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS. With the default users, standalone prints the generated password of
# `admin` on its first start; it is kept in AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${LMINDEXER_STACK_DIR:-$ROOT/.stack}
BUCKET=${LMINDEXER_BUCKET:-lmindexer-demo}
cd "$ROOT"

# shellcheck source=scripts/airflow_env.sh
source "$ROOT/scripts/airflow_env.sh" "${LMINDEXER_AIRFLOW_HOME:-$ROOT/.airflow}"
# The LocalExecutor keeps one idle process per parallelism slot (32 by default); a few suit a laptop.
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}

stop_stack() {
  lmindexer stack down --dir "$STACK_DIR" >/dev/null || echo "could not stop the local stack in $STACK_DIR" >&2
}

echo "== local stack ($STACK_DIR)"
lmindexer stack up --dir "$STACK_DIR"
trap stop_stack EXIT
eval "$(lmindexer stack env --dir "$STACK_DIR")"

echo "== Airflow database ($AIRFLOW_HOME)"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || {
  tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2
  exit 1
}

echo "== connections lmindexer_s3, lmindexer_search; Variable lmindexer_pipeline; bucket $BUCKET"
airflow connections delete lmindexer_s3 > /dev/null 2>&1 || true
airflow connections add lmindexer_s3 --conn-json "$AIRFLOW_CONN_LMINDEXER_S3"
airflow connections delete lmindexer_search > /dev/null 2>&1 || true
airflow connections add lmindexer_search --conn-json "$AIRFLOW_CONN_LMINDEXER_SEARCH"
# From here on the database holds the connections, so edits made in the UI take effect.
unset AIRFLOW_CONN_LMINDEXER_S3 AIRFLOW_CONN_LMINDEXER_SEARCH
airflow variables set lmindexer_pipeline "{\"base_uri\": \"s3://$BUCKET\"}"
python - "$BUCKET" <<'PY'
import sys

from lmindexer.storage.s3 import s3_client

client = s3_client()
if sys.argv[1] not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
    client.create_bucket(Bucket=sys.argv[1])
PY

echo "== airflow standalone: http://127.0.0.1:$AIRFLOW__API__PORT (Ctrl-C stops it and the local stack)"
# Airflow runs as a job in its own process group (job control on), so that Ctrl-C or a SIGTERM reaches only this
# script, which passes SIGINT on to standalone alone; standalone then stops each component with one SIGTERM. (If
# Ctrl-C also reached the components directly, the scheduler could get two signals in a row and hang in its
# shutdown, waiting for its executor's workers.) Once Airflow has exited, the EXIT trap stops the local stack.
set -m
airflow standalone < /dev/null &
airflow_pid=$!
set +m
trap 'kill -INT "$airflow_pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$airflow_pid" || status=$?
while kill -0 "$airflow_pid" 2>/dev/null; do
  status=0
  wait "$airflow_pid" || status=$?
done
exit "$status"
