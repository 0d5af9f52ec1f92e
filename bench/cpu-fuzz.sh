#!/usr/bin/env bash
# A long differential fuzzing session of the software CPU against the host
# CPU. Every mismatch found is shrunk and written under tests/regressions/,
# where the `regressions` test replays it from then on.
#
#   bench/cpu-fuzz.sh [SECONDS] [CATEGORY]     (defaults: 600, all)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
cat=${2:-all}
cargo run -q -p vireo-tests --profile ci --bin cpu-fuzz -- --seconds "$secs" --category "$cat"
