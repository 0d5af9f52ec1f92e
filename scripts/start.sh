#!/usr/bin/env bash
# Installs what Vireo needs, builds it optimized and starts it.
# Arguments are passed to `vireo` (e.g. `run --kernel K`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p vireo
exec target/release/vireo "$@"
