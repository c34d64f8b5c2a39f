#!/usr/bin/env bash
# Fuzzes a running saldo server against its own OpenAPI document with schemathesis (PyPI):
# every answer must be a non-5xx and must match the documented schema.
#
#   scripts/schemathesis.sh http://127.0.0.1:8080            # bounded run
#   SCHEMATHESIS_MAX_EXAMPLES=200 scripts/schemathesis.sh URL # more examples per operation
#
# The server should run with --auth none (or pass a token: SCHEMATHESIS_TOKEN=...). The run is
# bounded in examples per operation and in wall time; a seed makes it reproducible.
set -euo pipefail

url="${1:?usage: scripts/schemathesis.sh BASE_URL (e.g. http://127.0.0.1:8080)}"
url="${url%/}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
max_time_s="${SCHEMATHESIS_MAX_TIME_S:-300}"
seed="${SCHEMATHESIS_SEED:-4242}"
report_dir="${SCHEMATHESIS_REPORT_DIR:-target/schemathesis}"

command -v schemathesis >/dev/null || { echo "schemathesis is not installed (pip install schemathesis)" >&2; exit 2; }

extra=()
if [[ -n "${SCHEMATHESIS_TOKEN:-}" ]]; then
  extra+=(--header "Authorization: Bearer ${SCHEMATHESIS_TOKEN}")
fi

mkdir -p "$report_dir"
# The hard bound: schemathesis' own --max-time ends fuzzing, `timeout` ends everything else.
exec timeout --kill-after=30 "$((max_time_s + 120))" \
  schemathesis run "${url}/openapi.json" \
    --checks not_a_server_error,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$max_examples" \
    --max-time "$max_time_s" \
    --seed "$seed" \
    --workers 2 \
    --request-timeout 10 \
    --suppress-health-check all \
    --report junit --report-dir "$report_dir" \
    "${extra[@]}"
