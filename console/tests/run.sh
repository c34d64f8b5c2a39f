#!/usr/bin/env bash
# Runs the console's checks: the static check of its assets, then the end-to-end test in
# headless Chromium against a real `saldo serve` (see e2e.py).
#
# Needs (installed by .ci/run, not here):
#   apt-get install -y chromium chromium-driver
#   python3 -m pip install -r console/tests/requirements.txt
# and a built binary: $SALDO_BIN, or target/debug/saldo (cargo build -p saldo-gateway).
#
# Screenshots go to target/console-screenshots/ (override with CONSOLE_SCREENSHOTS).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

saldo_bin="${SALDO_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/saldo}"
if [[ ! -x "$saldo_bin" ]]; then
  echo "console tests: saldo binary not found at $saldo_bin" >&2
  echo "console tests: build it with 'cargo build -p saldo-gateway' or set SALDO_BIN" >&2
  exit 1
fi
for tool in "${CHROMIUM_BIN:-/usr/bin/chromium}" "${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}"; do
  if [[ ! -x "$tool" ]]; then
    echo "console tests: $tool missing: apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
done
if ! python3 -c 'import selenium, jwt' 2>/dev/null; then
  echo "console tests: python packages missing:" \
    "python3 -m pip install -r console/tests/requirements.txt" >&2
  exit 1
fi

python3 console/tests/static_check.py
# Chromium and chromedriver are Debian's; Selenium must never try to download its own.
export SE_OFFLINE=true
# The whole browser test is bounded: every wait inside is bounded too, this is the backstop.
timeout --kill-after=10 600 python3 console/tests/e2e.py \
  --saldo-bin "$saldo_bin" \
  --screenshots "${CONSOLE_SCREENSHOTS:-$repo/target/console-screenshots}"
