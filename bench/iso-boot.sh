#!/usr/bin/env bash
# CD boot benchmark: Debian's grub-rescue-pc CD and a Debian-installer CD
# (tests/fixtures/boot-media.sh) booted through SeaBIOS by `vireo run` on
# the software CPU and by QEMU 7.2 with TCG, same media and memory (1 GiB).
# Both are launched as processes with a QMP socket and watched the same way
# (QMP screendump every 50 ms, the screen read with a font); it prints, per
# run and as medians over the runs:
#   - wall time from launch to GRUB's banner on the text screen;
#   - wall time from launch to the installer's first dialog ("Select a
#     language"), Enter being pressed at isolinux's VESA menu.
#
#   bench/iso-boot.sh [-n RUNS] [--no-build] [--only grub|installer]
#
# QEMU comes from bench/fetch-qemu.sh; the media from
# tests/fixtures/boot-media.sh (cached under $VIREO_CACHE or ~/.cache/vireo).
# KVM rows are left out: /dev/kvm here is a paravirtual KVM that cannot run
# these guests (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
build=1
only=""
while [ $# -gt 0 ]; do
    case $1 in
        -n) runs=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "iso-boot.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
cache=${VIREO_CACHE:-$HOME/.cache/vireo}
if [ "$build" = 1 ]; then
    cargo build -q --profile ci -p vireo -p vireo-tests --bin vireo --bin iso-boot
fi
qemu=$(bench/fetch-qemu.sh "$cache" | tail -1)
mapfile -t media < <(tests/fixtures/boot-media.sh "$cache" | tail -3)
vgabios=/usr/share/seabios/vgabios-stdvga.bin
[ -f "$vgabios" ] || { echo "iso-boot.sh: $vgabios missing (apt-get install seabios)" >&2; exit 1; }
extra=()
[ -n "$only" ] && extra=(--only "$only")
target/ci/iso-boot --vireo target/ci/vireo --qemu "$qemu" \
    --grub "${media[0]}" --di "${media[1]}" --unifont "${media[2]}" \
    --vgabios "$vgabios" --runs "$runs" "${extra[@]}"
