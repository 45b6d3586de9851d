#!/usr/bin/env bash
# System and npm packages the test suite needs beyond `pip install -e ".[dev]"`; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v npm >/dev/null || need_apt+=(nodejs npm)  # the @fal-ai/client suite
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ -f tests/clients/js/package.json ] && [ ! -d tests/clients/js/node_modules ]; then
  (cd tests/clients/js && npm ci --no-audit --no-fund --silent)
fi
