#!/usr/bin/env bash
# Runs one test kernel under the reference QEMU 7.2 (TCG), as the tests and
# bench/cpu.sh expect: 128 MiB, COM1 on stdout, isa-debug-exit at 0xf4.
# Exits with QEMU's status (33 = the kernel passed).
#
#   tests/kernels/run-qemu.sh KERNEL.elf [CMDLINE] [extra QEMU options...]
#
# QEMU is fetched and cached by bench/fetch-qemu.sh; set QEMU to use another.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { sed -n '2,9p' "$0"; exit 2; }
kernel=$1
append=${2:-}
shift $(( $# >= 2 ? 2 : 1 ))
qemu=${QEMU:-$("$here/../../bench/fetch-qemu.sh" | tail -1)}
exec "$qemu" -accel tcg -M pc -m 128 -display none -serial stdio -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$kernel" -append "$append" "$@"
