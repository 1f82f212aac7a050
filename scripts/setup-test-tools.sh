#!/usr/bin/env bash
# Test-only tools that are not Python packages. Idempotent; run by `make test`.
set -euo pipefail
echo "test tools ready"
