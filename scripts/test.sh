#!/usr/bin/env bash
# Installs what the tests need, then builds with the optimized `ci` profile
# (guests must run on optimized code) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
cargo --version
cargo test --workspace --profile ci --no-fail-fast "$@"
