#!/usr/bin/env bash
# Measures `saldo serve` (release build, fsync on, temporary data dir) with wrk: single
# transfers, then batches. Bounded in time; stops the server it started (by PID).
#   gateway/bench/wrk.sh [duration_s=30] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-30}"
connections="${2:-64}"
bin=target/release/saldo
[[ -x $bin ]] || { echo "build first: cargo build --release -p saldo-gateway --bin saldo" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk missing (apt-get install -y wrk)" >&2; exit 2; }
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" --fsync true &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
python3 gateway/bench/setup_accounts.py "http://127.0.0.1:$port"
export SALDO_BENCH_RUN=$RANDOM
echo "== single transfers: wrk -t1 -c$connections -d${duration}s"
timeout $((duration + 30)) wrk -t1 -c"$connections" -d"${duration}s" --latency \
  -s gateway/bench/transfers.lua "http://127.0.0.1:$port"
echo "== batches of ${SALDO_BENCH_BATCH:=1000}: wrk -t1 -c4 -d${duration}s"
export SALDO_BENCH_BATCH
timeout $((duration + 30)) wrk -t1 -c4 -d"${duration}s" --latency \
  -s gateway/bench/batch.lua "http://127.0.0.1:$port"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^saldo_(wal_batches_total|wal_events_total|batch_transfers_total)|route="/v1/transfers",status=' || true
