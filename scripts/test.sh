#!/usr/bin/env bash
# Runs every test suite (unit, integration, security) with node:test against the built
# server. Each integration/security file starts its own real server on an ephemeral port.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
files=(dist/test/unit/*.test.js dist/test/integration/*.test.js dist/test/security/*.test.js)
if [ ${#files[@]} -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
exec node --test --test-concurrency="${TEST_CONCURRENCY:-2}" --test-timeout="${TEST_TIMEOUT_MS:-300000}" "${files[@]}"
