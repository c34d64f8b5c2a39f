#!/usr/bin/env bash
# Benchmarks saldo on this machine and writes docs/BENCHMARKS.md.
#
# Starts a release `saldo serve` (fsync on, temporary data dir, 127.0.0.1 only) and runs, with
# saldo-loadtest:
#   1. the reference target: 6,000 transfers/s open loop for 60 s (p99 objective 100 ms);
#   2. a sweep for the highest transfer rate with p99 <= 10 ms;
#   3. the batch endpoint at full speed (closed loop);
#   4. the generator's own ceiling: /healthz of saldo, and a canned 200 server;
#   5. if wrk is installed, a cross-check: the same closed loop with wrk and saldo-loadtest;
#   6. if openssl is installed, single transfers over HTTPS (keep-alive, test CA) next to the
#      same closed loop over plain HTTP.
# Generator and server share the machine's cores; the table says so.
#
# Every run is bounded in time (--duration, sweep steps and count bounded); the script kills
# only the PIDs it started. Artefacts (JSON reports, SVG plots, HDR logs, server log) are kept
# in target/bench/.
#
# Usage: scripts/bench.sh            # full run, about 10 minutes
#        BENCH_QUICK=1 scripts/bench.sh   # smoke run of every step, about 2 minutes
#        BENCH_OUT=path.md scripts/bench.sh  # write the table elsewhere
#        BENCH_PIN=1 scripts/bench.sh   # pin generator and canned server apart for run 4b
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT_MD=${BENCH_OUT:-docs/BENCHMARKS.md}
ART=target/bench
QUICK=${BENCH_QUICK:-0}
if [[ "$QUICK" == 1 ]]; then
  OPEN_DURATION=10s SWEEP_STEP=3s SWEEP_STEPS_MAX=8 BATCH_DURATION=5s CEILING_DURATION=3s
else
  OPEN_DURATION=60s SWEEP_STEP=10s SWEEP_STEPS_MAX=16 BATCH_DURATION=30s CEILING_DURATION=10s
fi
OPEN_RATE=${BENCH_OPEN_RATE:-6000}
SWEEP_START=${BENCH_SWEEP_START:-500}
BATCH_SIZE=${BENCH_BATCH_SIZE:-2000}
ACCOUNTS=${BENCH_ACCOUNTS:-10000}

command -v jq >/dev/null || { echo "bench.sh needs jq (apt-get install jq)" >&2; exit 3; }

echo "== building release binaries" >&2
cargo build --release -p saldo-gateway --bin saldo -p saldo-loadtest --bin saldo-loadtest \
  --example canned_server >&2
SALDO=target/release/saldo
LOADTEST=target/release/saldo-loadtest
CANNED=target/release/examples/canned_server

mkdir -p "$ART"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts saldo serve on a fresh data dir with any extra flags; sets SALDO_PID and TARGET. With
# --tls-cert among the flags the target is https://localhost:PORT, trusted through $WORK/ca.crt.
start_saldo() {
  local port scheme=http host=127.0.0.1 curl_tls=()
  port=$(free_port)
  if [[ " $* " == *" --tls-cert "* ]]; then
    scheme=https host=localhost curl_tls=(--cacert "$WORK/ca.crt")
  fi
  rm -rf "$WORK/data"
  "$SALDO" serve --listen "127.0.0.1:$port" --data-dir "$WORK/data" --fsync true --auth none \
    "$@" >>"$ART/saldo.log" 2>&1 &
  SALDO_PID=$!
  PIDS+=("$SALDO_PID")
  TARGET="$scheme://$host:$port"
  for _ in $(seq 1 600); do
    if curl -fsS "${curl_tls[@]}" "$TARGET/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SALDO_PID" 2>/dev/null || { echo "saldo serve died, see $ART/saldo.log" >&2; exit 3; }
    sleep 0.1
  done
  echo "saldo serve not ready after 60 s" >&2
  exit 3
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Runs saldo-loadtest; exit codes 1 (verification failed) and 2 (objective missed) are results
# to report, not reasons to stop the script.
run_lt() {
  local name=$1
  shift
  echo "== $name: saldo-loadtest $*" >&2
  set +e
  $LOADTEST --json "$ART/$name.json" --plot "$ART/$name.svg" "$@" >"$ART/$name.txt"
  local code=$?
  set -e
  cat "$ART/$name.txt" >&2
  if [[ $code -ge 3 ]]; then
    echo "saldo-loadtest failed ($code) in $name" >&2
    exit 3
  fi
}

: >"$ART/saldo.log"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. Reference target, open loop.
start_saldo
run_lt open-6000 --target "$TARGET" --rate "$OPEN_RATE" --duration "$OPEN_DURATION" --warmup 5s \
  --connections 256 --accounts "$ACCOUNTS" --p99-max 100ms --hdr-log "$ART/open-6000.hlog"
stop_pid "$SALDO_PID"

# 2. Sweep for the highest rate with p99 <= 10 ms.
start_saldo
run_lt sweep --target "$TARGET" --sweep --p99-max 10ms --sweep-start "$SWEEP_START" \
  --sweep-growth 1.5 --sweep-refine 3 --sweep-steps-max "$SWEEP_STEPS_MAX" \
  --sweep-step "$SWEEP_STEP" --warmup 2s --connections 512 --accounts "$ACCOUNTS"
stop_pid "$SALDO_PID"

# 3. Batch endpoint at full speed.
start_saldo
run_lt batch --target "$TARGET" --concurrency 8 --mix batch --batch-size "$BATCH_SIZE" \
  --duration "$BATCH_DURATION" --warmup 2s --accounts "$ACCOUNTS" --funding 1000000.00

# 4a. Generator ceiling against saldo's /healthz (server and generator share the cores).
run_lt ceiling-saldo --target "$TARGET" --concurrency 64 --mix healthz \
  --duration "$CEILING_DURATION" --warmup 1s
stop_pid "$SALDO_PID"

# 4b. Generator ceiling against a canned 200 server (as cheap as a server gets). With
# BENCH_PIN=1 the generator is pinned to core 0 and the server to core 1: the cleanest figure
# on an idle machine, a misleading one on a busy machine (the pinned generator then shares
# core 0 with whatever else runs), so it is off by default.
PIN_GEN=() PIN_SRV=() PIN_NOTE="not pinned"
if [[ "${BENCH_PIN:-0}" == 1 ]] && command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
  PIN_GEN=(taskset -c 0) PIN_SRV=(taskset -c 1) PIN_NOTE="generator pinned to core 0, server to core 1"
fi
port=$(free_port)
"${PIN_SRV[@]}" "$CANNED" "127.0.0.1:$port" 120 2>>"$ART/saldo.log" &
CANNED_PID=$!
PIDS+=("$CANNED_PID")
sleep 0.5
LOADTEST_PLAIN=$LOADTEST
LOADTEST="${PIN_GEN[*]} $LOADTEST_PLAIN"
run_lt ceiling-canned --target "http://127.0.0.1:$port" --concurrency 64 --mix healthz \
  --duration "$CEILING_DURATION" --warmup 1s
LOADTEST=$LOADTEST_PLAIN
stop_pid "$CANNED_PID"

# 5. Cross-check with wrk (if installed): the same closed loop of single transfers, 64
# connections, once with wrk and a Lua script and once with saldo-loadtest, on one server.
WRK_LINE=""
if command -v wrk >/dev/null; then
  start_saldo
  "$LOADTEST" --target "$TARGET" --rate 10 --duration 1s --warmup 0s --accounts 1000 \
    --run-id wrk --no-verify >/dev/null 2>&1
  cat >"$WORK/transfer.lua" <<'LUA'
local counter = 0
function request()
  counter = counter + 1
  local body = string.format(
    '{"id":"wrklua-%d","from":"wrk-a%d","to":"wrk-a%d","amount":"0.01","currency":"BRL"}',
    counter, counter % 1000, (counter + 7) % 1000)
  return wrk.format("POST", "/v1/transfers", {["Content-Type"] = "application/json"}, body)
end
LUA
  echo "== wrk cross-check" >&2
  timeout 60 wrk -t1 -c64 -d"$CEILING_DURATION" --latency -s "$WORK/transfer.lua" "$TARGET" \
    >"$ART/wrk.txt" 2>&1 || true
  cat "$ART/wrk.txt" >&2
  run_lt closed-64 --target "$TARGET" --concurrency 64 --duration "$CEILING_DURATION" \
    --warmup 0s --accounts 1000
  stop_pid "$SALDO_PID"
  wrk_rate=$(awk '/Requests\/sec/ {printf "%d", $2}' "$ART/wrk.txt")
  wrk_p50=$(awk '$1 == "50%" {print $2}' "$ART/wrk.txt")
  wrk_p99=$(awk '$1 == "99%" {print $2}' "$ART/wrk.txt")
  WRK_LINE="| wrk -t1 -c64 (Lua) | ${wrk_rate:-?}/s | ${wrk_p50:-?} | ${wrk_p99:-?} |"
fi

# 6. HTTPS next to HTTP: single transfers, closed loop, 64 keep-alive connections, each on a
# fresh server, one after the other. A test CA and a localhost certificate come from openssl.
TLS_DONE=0
if command -v openssl >/dev/null; then
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 1 -subj /CN=saldo-bench-ca \
    -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=localhost -keyout "$WORK/tls.key" -out "$WORK/tls.csr" \
    2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$WORK/tls.ext"
  openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 1 -extfile "$WORK/tls.ext" -out "$WORK/tls.crt" 2>/dev/null
  start_saldo
  run_lt transfers-http --target "$TARGET" --concurrency 64 --duration "$CEILING_DURATION" \
    --warmup 1s --accounts 1000
  stop_pid "$SALDO_PID"
  start_saldo --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key"
  run_lt transfers-https --target "$TARGET" --ca-file "$WORK/ca.crt" --concurrency 64 \
    --duration "$CEILING_DURATION" --warmup 1s --accounts 1000
  stop_pid "$SALDO_PID"
  TLS_DONE=1
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The table.
j() { jq -r "$2" "$ART/$1.json"; }
pass() { case "$1" in true) echo PASS ;; false) echo FAIL ;; *) echo "n/a" ;; esac; }
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
mem=$(free -h | awk '/^Mem:/ {print $2}')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo "# Benchmarks"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%dT%H:%MZ) at commit \`$commit\`"
  echo "$([[ "$QUICK" == 1 ]] && echo '(BENCH_QUICK=1: shortened runs, indicative only)')."
  echo "Reproduce with \`scripts/bench.sh\`; raw JSON reports, SVG plots and HDR logs go to"
  echo "\`target/bench/\`. The load generator is \`saldo-loadtest\` (see [loadtest.md](loadtest.md))."
  echo
  echo "## Machine"
  echo
  echo "| what | value |"
  echo "| --- | --- |"
  echo "| CPU | $cpu |"
  echo "| cores (nproc) | $(nproc) |"
  echo "| memory | $mem |"
  echo "| kernel | $(uname -sr) |"
  echo "| server | \`saldo serve\` release build, file stream with **fsync on**, 127.0.0.1 |"
  echo "| sharing | **generator and server share the same $(nproc) cores** (the generator runs one thread) |"
  echo "| load average (1/5/15 min) | before: $LOAD_BEFORE; after: $LOAD_AFTER (other work on the machine shows here) |"
  if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l > 1.0) }'; then
    echo
    echo "**Warning: the machine was busy before the run (1-minute load average ${LOAD_BEFORE%% *}"
    echo "on $(nproc) cores): other processes took CPU from both the server and the generator, so"
    echo "these figures understate what saldo does on an idle machine. Rerun on a quiet machine.**"
  fi
  echo
  echo "## Results"
  echo
  echo "| run | target | achieved | transfers committed/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | generator CPU | generator µs/request | objective | verification |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  row() {
    local name=$1 label=$2 objective=$3
    echo "| $label | $(j "$name" '.target_rate_per_s // "closed loop"') | $(j "$name" '.achieved_rate_per_s | floor') ops/s | $(j "$name" '.transfers_committed_per_s | floor') | $(j "$name" .latency_ms.p50) | $(j "$name" .latency_ms.p99) | $(j "$name" .latency_ms.p999) | $(j "$name" .latency_ms.max) | $(j "$name" .requests.errors) | $(j "$name" 'if .generator_utilisation then "\(.generator_utilisation * 100 | floor)%" else "-" end') | $(j "$name" '.generator_cpu_us_per_request // "-"') | $objective | $(pass "$(j "$name" .verification.passed)") |"
  }
  row open-6000 "1. single transfers, open loop, $OPEN_DURATION" \
    "p99 ≤ 100 ms: $(j open-6000 'if .objective.met then "met" else "NOT met" end')"
  row sweep "2. sweep, best step" \
    "highest rate with p99 ≤ 10 ms: $(j sweep '.sweep.best_rate_per_s // "none"')/s"
  row batch "3. batch endpoint ($BATCH_SIZE per request), closed loop, 8 in flight" "-"
  row ceiling-saldo "4a. generator ceiling: saldo /healthz, 64 connections" "-"
  row ceiling-canned "4b. generator ceiling: canned 200 server, 64 connections, $PIN_NOTE" "-"
  echo
  if [[ -n "$WRK_LINE" ]]; then
    echo "## Cross-check with wrk"
    echo
    echo "Single transfers, closed loop, 64 connections, one server, one after the other:"
    echo
    echo "| client | achieved | p50 | p99 |"
    echo "| --- | --- | --- | --- |"
    echo "$WRK_LINE"
    echo "| saldo-loadtest --concurrency 64 | $(j closed-64 '.achieved_rate_per_s | floor')/s | $(j closed-64 .latency_ms.p50)ms | $(j closed-64 .latency_ms.p99)ms |"
    echo
  fi
  if [[ "$TLS_DONE" == 1 ]]; then
    echo "## HTTPS next to HTTP"
    echo
    echo "Single transfers, closed loop, 64 keep-alive connections, a fresh server each, one"
    echo "after the other (TLS 1.3, ECDSA P-256 certificate, rustls on ring):"
    echo
    echo "| transport | achieved | p50 ms | p99 ms | errors | verification |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for name in transfers-http transfers-https; do
      echo "| ${name#transfers-} | $(j "$name" '.achieved_rate_per_s | floor')/s | $(j "$name" .latency_ms.p50) | $(j "$name" .latency_ms.p99) | $(j "$name" .requests.errors) | $(pass "$(j "$name" .verification.passed)") |"
    done
    echo
  fi
  echo "## Sweep curve (objective p99 ≤ 10 ms)"
  echo
  echo "| target/s | achieved/s | p50 ms | p99 ms | errors | result |"
  echo "| --- | --- | --- | --- | --- | --- |"
  jq -r '.sweep.steps[] | "| \(.target_rate_per_s) | \(.achieved_rate_per_s | floor) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.counts.errors) | \(if .passed then "pass" else "fail" end) |"' "$ART/sweep.json"
  echo
  echo "## Reading these numbers"
  echo
  echo "- Latency is measured from each request's scheduled time in open loop (no coordinated"
  echo "  omission) and from its send in closed loop. \`errors\` are 5xx, 429 and transport"
  echo "  failures."
  echo "- Runs 4a and 4b measure the generator itself: 4b is its ceiling on this machine with"
  echo "  nearly all work on the client side; if a server figure approaches it, the client is"
  echo "  the limit, not the server. \`generator CPU\` is the share of its one thread the"
  echo "  generator kept busy; near 100% the client, not the server, set the pace."
  echo "  \`generator µs/request\` is its CPU time per request: 1,000,000 divided by it is the"
  echo "  request rate one core can drive, however busy the machine was during the run."
  echo "- Run 2's row shows the best passing sweep step (or the last step when none passed)."
  echo "- Verification after each run checks that the server holds exactly the money the"
  echo "  acknowledged history implies (see loadtest.md)."
} >"$OUT_MD"
echo "== wrote $OUT_MD" >&2
cat "$OUT_MD"
