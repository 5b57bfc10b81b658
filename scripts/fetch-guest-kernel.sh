#!/usr/bin/env bash
# Fetches Debian's stock kernel (the package `linux-image-amd64` points at) and caches what the
# in-band IPMI test boots under qemu: vmlinuz and the modules ipmi_msghandler, ipmi_si,
# ipmi_devintf (the kernel IPMI driver behind /dev/ipmi0) and e1000 (the guest's NIC).
# Idempotent: once cached, later runs only check (and work offline).
# Cache: ${XDG_CACHE_HOME:-~/.cache}/wattwise/guest-kernel/current -> <release>/{vmlinuz,modules/}
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/wattwise/guest-kernel"
MODULES=(ipmi_msghandler ipmi_si ipmi_devintf e1000)

complete() {
  [ -s "$1/vmlinuz" ] || return 1
  for m in "${MODULES[@]}"; do [ -s "$1/modules/$m.ko" ] || return 1; done
}
if complete "$CACHE/current"; then
  echo "fetch-guest-kernel: cached $(readlink "$CACHE/current") in $CACHE"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
image_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
pkg=$(image_package)
if [ -z "$pkg" ]; then
  $SUDO apt-get update -qq
  pkg=$(image_package)
fi
[ -n "$pkg" ] || { echo "fetch-guest-kernel: apt knows no linux-image-amd64" >&2; exit 1; }
release=${pkg#linux-image-}

work=$(mktemp -d "${TMPDIR:-/tmp}/wattwise-guest-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work" # apt's download sandbox user must be able to write here
echo "fetch-guest-kernel: downloading $pkg"
( cd "$work" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed as root' || true )
deb=$(ls "$work"/*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || { echo "fetch-guest-kernel: apt-get download $pkg produced no .deb" >&2; exit 1; }
mkdir "$work/x"
dpkg-deb --fsys-tarfile "$deb" \
  | tar -x -C "$work/x" --wildcards '*/boot/vmlinuz-*' '*/drivers/char/ipmi/*' '*/ethernet/intel/e1000/*'

dest="$CACHE/$release"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/modules"
cp "$(find "$work/x" -path "*/boot/vmlinuz-$release" | head -n1)" "$dest.tmp/vmlinuz"
for m in "${MODULES[@]}"; do
  ko=$(find "$work/x" -name "$m.ko*" | head -n1)
  [ -n "$ko" ] || { echo "fetch-guest-kernel: $pkg has no module $m" >&2; exit 1; }
  case "$ko" in
    *.ko) cp "$ko" "$dest.tmp/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$ko" > "$dest.tmp/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$ko" > "$dest.tmp/modules/$m.ko" ;;
    *) echo "fetch-guest-kernel: unknown module format $ko" >&2; exit 1 ;;
  esac
done
echo "$release" > "$dest.tmp/release"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
ln -sfn "$release" "$CACHE/current.tmp" && mv -T "$CACHE/current.tmp" "$CACHE/current"
complete "$CACHE/current" || { echo "fetch-guest-kernel: cache incomplete after fetch" >&2; exit 1; }
echo "fetch-guest-kernel: cached $release in $CACHE"
