#!/usr/bin/env bash
# Fetches QEMU 7.2 (Debian bookworm's qemu-system-x86 with its firmware) and
# unpacks it without installing it: the reference emulator for the multiboot
# test kernels and bench/cpu.sh. Idempotent: once done it only prints the path.
#
#   bench/fetch-qemu.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $VIREO_CACHE, then ~/.cache/vireo. The packages are
# unpacked into CACHE_DIR/qemu72/root. The last line printed is the path of a
# wrapper, CACHE_DIR/qemu72/qemu-system-x86_64, that runs the unpacked binary
# with its modules (QEMU_MODULE_DIR) and firmware (-L) found:
#   QEMU=$(bench/fetch-qemu.sh | tail -1)
#   "$QEMU" -accel tcg -M pc -m 128 -display none -serial stdio -no-reboot \
#       -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel K.elf -append ...
#
# It never installs qemu-system-x86 (that would replace the machine's newer
# qemu-utils); only the shared libraries the binary links against are
# installed with apt-get, when missing.
set -euo pipefail

cache=${1:-${VIREO_CACHE:-$HOME/.cache/vireo}}
dir=$cache/qemu72
root=$dir/root
bin=$root/usr/bin/qemu-system-x86_64
wrapper=$dir/qemu-system-x86_64
# Package -> version pattern (QEMU's own packages must all be 7.2).
pkgs=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)

log() { echo "fetch-qemu: $*" >&2; }

missing_libs() {
    ldd "$bin" 2>/dev/null | awk '/=> not found/ { print $1 }'
}

pick_version() { # package -> version to download
    local want='.'
    case $1 in qemu-*) want='^1:7\.2' ;; esac
    apt-cache madison "$1" 2>/dev/null | awk -v w="$want" '$3 ~ w { print $3; exit }'
}

if [ ! -e "$dir/.complete" ]; then
    command -v apt-get >/dev/null || { log "needs apt-get and dpkg-deb (Debian)"; exit 1; }
    mkdir -p "$dir/debs"
    cd "$dir/debs"
    specs=()
    for p in "${pkgs[@]}"; do
        ls "${p}"_*.deb >/dev/null 2>&1 && continue
        v=$(pick_version "$p")
        if [ -z "$v" ]; then
            log "apt-get update (no $p in the package lists)"
            apt-get update -qq >&2 || true
            v=$(pick_version "$p")
        fi
        [ -n "$v" ] || { log "no suitable $p package available"; exit 1; }
        specs+=("$p=$v")
    done
    if [ ${#specs[@]} -gt 0 ]; then
        log "downloading ${specs[*]}"
        apt-get download -q "${specs[@]}" 2>&1 | grep -v 'unsandboxed' >&2 || true
    fi
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    for p in "${pkgs[@]}"; do
        deb=$(ls "${p}"_*.deb 2>/dev/null | head -1)
        [ -n "$deb" ] || { log "download of $p failed"; exit 1; }
        dpkg-deb -x "$deb" "$root.tmp"
    done
    # One firmware directory for -L: QEMU's data plus SeaBIOS and iPXE ROMs
    # (Debian's qemu finds those in /usr/share/seabios and /usr/lib/ipxe/qemu).
    share=$root.tmp/usr/share/qemu
    for f in "$root.tmp"/usr/share/seabios/* "$root.tmp"/usr/lib/ipxe/qemu/*; do
        [ -e "$f" ] || continue
        ln -sf "../../${f#"$root.tmp"/usr/}" "$share/$(basename "$f")"
    done
    rm -rf "$root"
    mv "$root.tmp" "$root"
    cat > "$wrapper" <<WRAP
#!/bin/sh
# QEMU 7.2 unpacked by bench/fetch-qemu.sh.
QEMU_MODULE_DIR="$root/usr/lib/x86_64-linux-gnu/qemu" exec "$bin" -L "$root/usr/share/qemu" "\$@"
WRAP
    chmod +x "$wrapper"
    touch "$dir/.complete"
fi

# Shared libraries: install the library packages (never QEMU itself).
libs=$(missing_libs)
if [ -n "$libs" ]; then
    deps=$(dpkg-deb -f "$(ls "$dir"/debs/qemu-system-x86_*.deb | head -1)" Depends |
        tr ',' '\n' | sed 's/^ *//; s/[ (|].*//' | grep -v -e '^qemu-' -e '^seabios' -e '^ipxe' | grep . || true)
    todo=()
    for d in $deps; do
        dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || todo+=("$d")
    done
    if [ ${#todo[@]} -gt 0 ]; then
        log "installing libraries: ${todo[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${todo[@]}" >&2 || {
            apt-get update -qq >&2
            apt-get install -y -q --no-install-recommends "${todo[@]}" >&2
        }
    fi
    libs=$(missing_libs)
    [ -z "$libs" ] || { log "still missing: $libs"; exit 1; }
fi

echo "$wrapper"
