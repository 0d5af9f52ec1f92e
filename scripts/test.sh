#!/usr/bin/env bash
# Installs what the tests need, then builds with the optimized `ci` profile
# (guests must run on optimized code) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
cargo --version
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --profile ci --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
