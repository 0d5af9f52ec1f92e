#!/usr/bin/env bash
# Linux boot benchmark: Debian's kernel + the busybox initramfs (with
# guest-check) booted by Vireo's software CPU and by QEMU 7.2's TCG, with 1
# and 2 vCPUs (and on KVM where the host can run unmodified guests), same
# kernel, initramfs, memory and command line. For each configuration it
# prints the medians over the runs of: wall time from launch to the marker
# line VIREO-BOOT-OK, wall time to process exit (the guest reboots under
# -no-reboot), peak RSS, and the guest's CPU-bound benchmark time
# (guest-check --bench, measured inside the guest).
#
#   bench/boot.sh [-n RUNS] [--no-build] [--no-qemu] [--smp "1 2"] [--interp]
#
# vireo-soft rows are the software CPU as shipped (interpreter plus the
# Cranelift JIT for hot 64-bit code); --interp adds a vireo-interp-smp1 row
# with the JIT off (VIREO_JIT=off), the interpreter alone.
# Needs python3 (to timestamp the serial stream and read each child's peak
# RSS). QEMU comes from bench/fetch-qemu.sh; the fixtures from
# tests/fixtures/ (cached under $VIREO_CACHE or ~/.cache/vireo).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=3
build=1
qemu=1
smps="1 2"
interp=0
while [ $# -gt 0 ]; do
    case $1 in
        -n) runs=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-qemu) qemu=0; shift ;;
        --smp) smps=$2; shift 2 ;;
        --interp) interp=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "boot.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
command -v python3 >/dev/null || { echo "boot.sh: python3 is required (apt-get install python3)" >&2; exit 1; }

export PATH="$HOME/.cargo/bin:$PATH"
if [ "$build" = 1 ]; then
    echo "== building vireo (cargo build --profile ci -p vireo)" >&2
    cargo build --profile ci -p vireo >&2
fi
vireo=${VIREO:-$root/target/ci/vireo}
[ -x "$vireo" ] || { echo "boot.sh: $vireo not built" >&2; exit 1; }

cache=${VIREO_CACHE:-$HOME/.cache/vireo}
mkdir -p "$cache"
gc=$(bash tests/fixtures/build-guest-check.sh "$cache/guest-check" | tail -1)
out=$(VIREO_EXTRA_BINS=$gc bash tests/fixtures/debian-linux.sh "$cache/debian-linux" | tail -2)
kernel=$(echo "$out" | head -1)
initrd=$(echo "$out" | tail -1)
append='console=ttyS0 quiet vireo.cmd=/bin/guest-check%20--bench'

configs=()
for n in $smps; do
    configs+=("vireo-soft-smp$n|$vireo run --kernel $kernel --initrd $initrd -m 512M --smp $n --accel soft --no-reboot --serial stdio --append")
done
if [ "$interp" = 1 ]; then
    configs+=("vireo-interp-smp1|env VIREO_JIT=off $vireo run --kernel $kernel --initrd $initrd -m 512M --smp 1 --accel soft --no-reboot --serial stdio --append")
fi
if [ "$qemu" = 1 ]; then
    echo "== fetching QEMU 7.2 (bench/fetch-qemu.sh)" >&2
    qemu_bin=$(bench/fetch-qemu.sh | tail -1)
    for n in $smps; do
        configs+=("qemu-tcg-smp$n|$qemu_bin -accel tcg -smp $n -m 512 -kernel $kernel -initrd $initrd -display none -serial stdio -monitor none -no-reboot -append")
    done
fi
kvm_reason=""
if [ ! -e /dev/kvm ]; then
    kvm_reason="no /dev/kvm"
elif [ -d /sys/module/kvm_pvm ]; then
    kvm_reason="/dev/kvm is PVM (paravirtual KVM), which cannot run unmodified guests"
else
    configs+=("vireo-kvm-smp1|$vireo run --kernel $kernel --initrd $initrd -m 512M --accel kvm --no-reboot --serial stdio --append")
    [ "$qemu" = 1 ] && configs+=("qemu-kvm-smp1|$qemu_bin -accel kvm -smp 1 -m 512 -kernel $kernel -initrd $initrd -display none -serial stdio -monitor none -no-reboot -append")
fi
[ -z "$kvm_reason" ] || echo "== KVM rows skipped: $kvm_reason" >&2

python3 - "$runs" "$append" "${configs[@]}" <<'PY'
import os, shlex, statistics, subprocess, sys, time

runs = int(sys.argv[1])
append = sys.argv[2]
configs = [c.split("|", 1) for c in sys.argv[3:]]

def one(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    marker = bench = None
    buf = b""
    deadline = t0 + 900
    while True:
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        if marker is None and b"VIREO-BOOT-OK" in buf:
            marker = time.monotonic() - t0
        if time.monotonic() > deadline:
            p.kill()
            break
    _, status, ru = os.wait4(p.pid, 0)
    total = time.monotonic() - t0
    for line in buf.decode(errors="replace").splitlines():
        if "bench-ms:" in line:
            bench = int(line.split("bench-ms:")[1].split()[0])
    ok = b"guest-check done" in buf
    return marker, total, ru.ru_maxrss / 1024.0, bench, ok

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(x, f):
    return "-" if x is None else f % x

print(f"{'config':<18} {'runs':>4} {'marker s':>9} {'exit s':>8} {'RSS MiB':>8} {'bench ms':>9}  ok")
for name, cmd in configs:
    res = []
    for i in range(runs):
        r = one(shlex.split(cmd) + [append])
        print(f"  {name} run {i + 1}: marker {fmt(r[0], '%.2f')} s, exit {r[1]:.2f} s, "
              f"RSS {r[2]:.0f} MiB, bench {fmt(r[3], '%d')} ms, ok={r[4]}", file=sys.stderr)
        res.append(r)
    print(f"{name:<18} {runs:>4} {fmt(med([r[0] for r in res]), '%9.2f')} "
          f"{fmt(med([r[1] for r in res]), '%8.2f')} {fmt(med([r[2] for r in res]), '%8.0f')} "
          f"{fmt(med([r[3] for r in res]), '%9.0f')}  {all(r[4] for r in res)}", flush=True)
PY
