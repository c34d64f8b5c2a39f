#!/usr/bin/env bash
# Fuzzes saldo against its own OpenAPI document with schemathesis (PyPI): every answer must be
# a non-5xx and must match the documented schema. Bounded in examples per operation and in
# wall time, with a fixed seed (reproducible).
#
#   scripts/schemathesis.sh http://127.0.0.1:8080          # a server that is already running
#   scripts/schemathesis.sh --serve target/debug/saldo     # start one (127.0.0.1, free port,
#                                                          # temp data dir), fuzz it, stop it
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 50 per operation), SCHEMATHESIS_MAX_TIME_S
# (default 300), SCHEMATHESIS_SEED, SCHEMATHESIS_REPORT_DIR (default target/schemathesis),
# SCHEMATHESIS_TOKEN (a bearer token, for a server running --auth jwt).
set -euo pipefail

max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
max_time_s="${SCHEMATHESIS_MAX_TIME_S:-300}"
seed="${SCHEMATHESIS_SEED:-4242}"
report_dir="${SCHEMATHESIS_REPORT_DIR:-target/schemathesis}"

command -v schemathesis >/dev/null || { echo "schemathesis is not installed (pip install schemathesis)" >&2; exit 2; }

server_pid=""
data_dir=""
stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [[ -n "$data_dir" ]] && rm -rf "$data_dir"
}
trap stop_server EXIT

if [[ "${1:-}" == "--serve" ]]; then
  bin="${2:?usage: scripts/schemathesis.sh --serve PATH_TO_SALDO}"
  data_dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$report_dir"
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data_dir" --fsync false --auth none \
    >"$report_dir/server.log" 2>&1 &
  server_pid=$!
  url="http://127.0.0.1:$port"
  for _ in $(seq 200); do
    curl -sf "$url/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$report_dir/server.log" >&2; exit 1; }
    sleep 0.1
  done
  curl -sf "$url/readyz" >/dev/null || { echo "server not ready" >&2; exit 1; }
else
  url="${1:?usage: scripts/schemathesis.sh BASE_URL | --serve PATH_TO_SALDO}"
fi
url="${url%/}"

extra=()
if [[ -n "${SCHEMATHESIS_TOKEN:-}" ]]; then
  extra+=(--header "Authorization: Bearer ${SCHEMATHESIS_TOKEN}")
fi

mkdir -p "$report_dir"
# schemathesis' --max-time ends fuzzing; `timeout` is the hard bound on everything else.
status=0
timeout --kill-after=30 "$((max_time_s + 120))" \
  schemathesis run "${url}/openapi.json" \
    --checks not_a_server_error,response_schema_conformance \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --max-time "$max_time_s" \
    --seed "$seed" \
    --workers 2 \
    --request-timeout 10 \
    --suppress-health-check all \
    --report junit --report-dir "$report_dir" \
    "${extra[@]}" || status=$?
exit "$status"
