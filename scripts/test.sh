#!/usr/bin/env bash
# Runs every test of saldo: the Rust workspace (unit, property, simulation, crash, HTTP,
# load-generator tests), the console's end-to-end test in headless Chromium, and schemathesis
# against the server's OpenAPI document. Installs what the tests need when it is missing
# (Debian: chromium, chromium-driver, curl; PyPI: selenium, PyJWT, schemathesis), so it works
# on a fresh machine. Every server it starts listens on 127.0.0.1 and is stopped by PID.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scripts/install-test-deps.sh

echo "== cargo test (one profile for every test)"
cargo test --workspace --locked

echo "== console end-to-end (headless Chromium)"
console/tests/run.sh

echo "== schemathesis against /openapi.json"
SCHEMATHESIS_MAX_TIME_S="${SCHEMATHESIS_MAX_TIME_S:-120}" scripts/schemathesis.sh --serve target/debug/saldo

echo "== all tests passed"
