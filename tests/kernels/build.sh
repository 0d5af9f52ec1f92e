#!/usr/bin/env bash
# Builds the multiboot test kernels into OUTDIR (default: ./out).
#   tests/kernels/build.sh [OUTDIR] [KERNEL...]
# Needs only gcc (as a preprocessor/assembler driver) and GNU ld: no 32-bit C
# library. Every kernel is a 32-bit ELF (QEMU's -kernel rejects ELF64). A
# kernel with 64-bit code (it includes lib64.S) is assembled and linked as
# x86-64, whose relocations can hold 64-bit code's sign-extended addresses,
# then converted to elf32-i386 with objcopy (all its addresses are below 4G).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
shift || true
kernels=("$@")
if [ ${#kernels[@]} -eq 0 ]; then
    kernels=(hello realmode protected longmode cpubench)
fi
CC=${CC:-gcc}
LD=${LD:-ld}
mkdir -p "$out"
OBJCOPY=${OBJCOPY:-objcopy}
ldflags=(-T "$here/link.ld" -z noexecstack --build-id=none)
# binutils >= 2.39 warns about the (deliberately) writable+executable segment.
if [[ $("$LD" --help 2>/dev/null) == *--no-warn-rwx-segments* ]]; then
    ldflags+=(--no-warn-rwx-segments)
fi
for k in "${kernels[@]}"; do
    src=$here/$k.S
    [ -f "$src" ] || { echo "build.sh: no kernel $k ($src)" >&2; exit 1; }
    if grep -q '^#include "lib64.S"' "$src"; then
        "$CC" -m64 -nostdlib -ffreestanding -fno-pic -I"$here/include" -c "$src" -o "$out/$k.o"
        "$LD" -m elf_x86_64 "${ldflags[@]}" -o "$out/$k.elf64" "$out/$k.o"
        "$OBJCOPY" -I elf64-x86-64 -O elf32-i386 "$out/$k.elf64" "$out/$k.elf"
        rm -f "$out/$k.elf64"
    else
        "$CC" -m32 -nostdlib -ffreestanding -fno-pic -I"$here/include" -c "$src" -o "$out/$k.o"
        "$LD" -m elf_i386 "${ldflags[@]}" -o "$out/$k.elf" "$out/$k.o"
    fi
    rm -f "$out/$k.o"
done
