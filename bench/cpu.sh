#!/usr/bin/env bash
# CPU benchmark: the same integer workload (tests/kernels/cpubench.S) on
# Vireo's software CPU and on QEMU 7.2's TCG, same memory, same iteration
# count; prints the median wall times, their ratio, Vireo's guest
# instructions per second, and checks that both computed the same checksum.
#
#   bench/cpu.sh [-r RUNS] [-i ITERS] [-m MEM] [--no-build] [--no-qemu]
#
#   -r RUNS     runs per emulator (default 5; env RUNS)
#   -i ITERS    workload iterations, passed as "iters=N" (default 200; env ITERS)
#   -m MEM      guest memory (default 128M)
#   --no-build  use the existing target/ci/vireo
#   --no-qemu   skip QEMU (no download, no comparison)
#
# QEMU comes from bench/fetch-qemu.sh (cached under $VIREO_CACHE or
# ~/.cache/vireo). Wall times include each emulator's start-up (QEMU also
# runs SeaBIOS); the "startup" row (iters=0) shows how much that is.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=${RUNS:-5}
iters=${ITERS:-200}
mem=128M
build=1
qemu=1
while [ $# -gt 0 ]; do
    case $1 in
        -r) runs=$2; shift 2 ;;
        -i) iters=$2; shift 2 ;;
        -m) mem=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-qemu) qemu=0; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "cpu.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

export PATH="$HOME/.cargo/bin:$PATH"
if [ "$build" = 1 ]; then
    echo "== building vireo (cargo build --profile ci -p vireo)" >&2
    cargo build --profile ci -p vireo >&2
fi
vireo=$root/target/ci/vireo
[ -x "$vireo" ] || { echo "cpu.sh: $vireo not built" >&2; exit 1; }

work=$root/target/bench-cpu
mkdir -p "$work"
bash tests/kernels/build.sh "$work" cpubench
kernel=$work/cpubench.elf

if [ "$qemu" = 1 ]; then
    echo "== fetching QEMU 7.2 (bench/fetch-qemu.sh)" >&2
    qemu_bin=$(bench/fetch-qemu.sh | tail -1)
fi

# run NAME ITERS -> appends "seconds status" to $work/NAME.times; keeps the
# last output in $work/NAME.out / NAME.err
run_once() {
    local name=$1 n=$2 t0 t1 status=0
    t0=$EPOCHREALTIME
    case $name in
        vireo*)
            "$vireo" run --accel soft --no-reboot --serial stdio -m "$mem" --log info \
                --kernel "$kernel" --append "iters=$n" \
                </dev/null >"$work/$name.out" 2>"$work/$name.err" || status=$?
            ;;
        qemu*)
            "$qemu_bin" -accel tcg -M pc -m "$mem" -display none -serial stdio -no-reboot \
                -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
                -kernel "$kernel" -append "iters=$n" \
                </dev/null >"$work/$name.out" 2>"$work/$name.err" || status=$?
            ;;
    esac
    t1=$EPOCHREALTIME
    if [ "$status" != 33 ]; then
        echo "cpu.sh: $name exited with status $status (expected 33); its output:" >&2
        cat "$work/$name.out" "$work/$name.err" >&2
        exit 1
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>"$work/$name.times"
}

checksum_of() { # NAME
    grep -o 'checksum=[0-9a-f]*' "$work/$1.out" | tail -1 | cut -d= -f2
}

stats() { # FILE -> "median min max"
    sort -g "$1" | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.3f %.3f %.3f\n", m, v[1], v[NR] }'
}

emulators=(vireo)
[ "$qemu" = 1 ] && emulators+=(qemu)
for e in "${emulators[@]}"; do
    rm -f "$work/$e.times" "$work/$e-startup.times" "$work/$e.checksums"
    echo "== $e: $runs runs of iters=$iters (+ $runs start-up runs with iters=0)" >&2
    for _ in $(seq "$runs"); do
        run_once "$e-startup" 0
        run_once "$e" "$iters"
        c=$(checksum_of "$e")
        [ -n "$c" ] || { echo "cpu.sh: $e printed no checksum" >&2; cat "$work/$e.out" >&2; exit 1; }
        echo "$c" >>"$work/$e.checksums"
    done
done

# Guest instructions, from `vireo run --log info` ("instructions: N").
instr=$(sed 's/\x1b\[[0-9;]*m//g' "$work/vireo.err" | grep -o 'instructions: [0-9]*' | tail -1 | awk '{ print $2 }')
instr0=$(sed 's/\x1b\[[0-9;]*m//g' "$work/vireo-startup.err" | grep -o 'instructions: [0-9]*' | tail -1 | awk '{ print $2 }')

read -r v_med v_min v_max < <(stats "$work/vireo.times")
read -r v0_med _ _ < <(stats "$work/vireo-startup.times")
v_sum=$(sort -u "$work/vireo.checksums" | xargs)

echo
echo "cpubench iters=$iters, memory $mem, $runs runs each (wall seconds)"
printf '%-22s %9s %9s %9s %11s  %s\n' emulator median min max startup checksum
printf '%-22s %9s %9s %9s %11s  %s\n' "vireo --accel soft" "$v_med" "$v_min" "$v_max" "$v0_med" "$v_sum"
if [ "$qemu" = 1 ]; then
    read -r q_med q_min q_max < <(stats "$work/qemu.times")
    read -r q0_med _ _ < <(stats "$work/qemu-startup.times")
    q_sum=$(sort -u "$work/qemu.checksums" | xargs)
    printf '%-22s %9s %9s %9s %11s  %s\n' "qemu 7.2 -accel tcg" "$q_med" "$q_min" "$q_max" "$q0_med" "$q_sum"
    awk -v v="$v_med" -v q="$q_med" -v v0="$v0_med" -v q0="$q0_med" 'BEGIN {
        printf "ratio vireo/qemu (median wall): %.2fx\n", v / q
        if (v - v0 > 0 && q - q0 > 0)
            printf "ratio without start-up:        %.2fx\n", (v - v0) / (q - q0) }'
fi
if [ -n "$instr" ]; then
    awk -v n="$instr" -v n0="${instr0:-0}" -v t="$v_med" -v t0="$v0_med" 'BEGIN {
        printf "vireo guest instructions: %d (%d of them at iters=0)\n", n, n0
        printf "vireo guest MIPS: %.1f (whole run), %.1f (workload only)\n", n / t / 1e6,
            (t - t0 > 0) ? (n - n0) / (t - t0) / 1e6 : 0 }'
    if [ "$qemu" = 1 ]; then
        awk -v n="$instr" -v n0="${instr0:-0}" -v t="$q_med" -v t0="$q0_med" 'BEGIN {
            if (t - t0 > 0) printf "qemu tcg MIPS on the same workload: %.1f (workload only)\n", (n - n0) / (t - t0) / 1e6 }'
    fi
else
    echo "vireo guest instructions: (not reported: vireo run --log info printed no \"instructions: N\")"
fi

if [ "$(echo "$v_sum" | wc -w)" != 1 ]; then
    echo "FAIL: vireo's checksums differ between runs: $v_sum" >&2
    exit 1
fi
if [ "$qemu" = 1 ] && [ "$v_sum" != "$q_sum" ]; then
    echo "FAIL: checksums differ: vireo $v_sum, qemu $q_sum" >&2
    exit 1
fi
echo "checksums agree"
