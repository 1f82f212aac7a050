#!/usr/bin/env bash
# Test-only tools that are not Python packages. Idempotent; run by `make test` (as root on a
# fresh CI machine).
#
# - Chromium from Debian: the browser tests drive /usr/bin/chromium with Playwright for Python
#   (pinned in requirements-dev.txt). Playwright's own browser download (`playwright install`)
#   is never run: it fails on these machines.
# - The browser agents the tests load (boomerangjs, @grafana/faro-web-sdk, OpenTelemetry web),
#   from the npm registry into tests/browser/node_modules, exactly as package-lock.json pins.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "Chromium is missing: run 'sudo apt-get install -y chromium' (or make test as root)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

stamp=tests/browser/node_modules/.installed-stamp
if [ ! -f "$stamp" ] || [ tests/browser/package-lock.json -nt "$stamp" ]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"
fi

echo "test tools ready: $(/usr/bin/chromium --version 2>/dev/null), node $(node --version)"
