#!/usr/bin/env bash
# Installs what Vireo needs to build and run on Debian 12 (bookworm).
# Usage: scripts/setup.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# seabios: the PC firmware (bios-256k.bin, vgabios-stdvga.bin).
pkgs=(build-essential pkg-config binutils ca-certificates curl seabios)
if [ "${1:-}" = "--test" ]; then
  # dpkg-dev/apt for fixture downloads (apt-get download + dpkg-deb -x);
  # xorriso and isolinux to build the CD images the tests boot, syslinux,
  # mtools and dosfstools to build a bootable FAT disk image; acpica-tools
  # (iasl) to check the ACPI tables; socat as a QMP client.
  pkgs+=(dpkg-dev xz-utils xorriso isolinux syslinux mtools dosfstools acpica-tools socat)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Rust 1.95 or newer (Debian's own cargo is too old): rustup if absent.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
