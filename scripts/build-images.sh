#!/usr/bin/env bash
# Builds the two images from Dockerfile.agent and Dockerfile.scheduler with podman, offline, as
# tests/tests/images.rs runs them (scripts/test calls this before the tests; the test calls it
# too when an image is missing). Prints one `<name>=<image>` line per image on stdout.
#
# No registry is reachable, so both base images come from Debian itself and are imported as
# local images (the Dockerfiles take them as build arguments; their defaults are the public ones):
#   localhost/debian:bookworm-slim          debootstrap --variant=minbase bookworm, trimmed
#   localhost/wattwise-rust-build:bookworm  the same plus gcc and libc6-dev (the linker); the Rust
#                                           toolchain and crates are the host's, mounted read-only
# Cached under ${XDG_CACHE_HOME:-~/.cache}/wattwise/ so that a second run costs seconds:
#   images/rootfs/*.tar   the debootstrapped trees (re-imported if podman's storage was wiped)
#   images/target/        the build stage's cargo target dir (incremental release builds)
#   podman/storage/       podman's layers (scripts/podman)
# An image is tagged with a hash of everything it is built from (Dockerfile, build context as
# .dockerignore filters it, base image ids) and not rebuilt while that tag exists.
set -euo pipefail
cd "$(dirname "$0")/.."

podman=scripts/podman
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wattwise/images"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
runtime_image=localhost/debian:bookworm-slim
build_image=localhost/wattwise-rust-build:bookworm
mkdir -p "$cache/rootfs" "$cache/target"
log() { echo "build-images: $*" >&2; }

# One build at a time on this machine (test binaries and scripts/test may call this together).
exec 9>"$cache/lock"
flock 9

# debootstrap'd Debian bookworm (minbase + extra packages) as a tarball in the cache.
rootfs_tar() { # name, comma-separated extra packages
  local tar="$cache/rootfs/$1.tar"
  if [ ! -s "$tar" ]; then
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/wattwise-rootfs.XXXXXX")
    log "debootstrap $1 from $mirror"
    debootstrap --variant=minbase ${2:+--include="$2"} bookworm "$root" "$mirror" >&2 ||
      { rm -rf "$root"; log "debootstrap failed"; exit 1; }
    # What a slim image leaves out: apt lists and caches, documentation (copyrights stay), locales.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
      "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    find "$root/usr/share/doc" -type f ! -name copyright -delete
    tar --numeric-owner -C "$root" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

# Imports a cached tree as a local image unless podman already has it.
base_image() { # image, rootfs name, extra packages, extra --change arguments...
  local image=$1 name=$2 packages=$3
  shift 3
  if ! $podman image exists "$image"; then
    local tar
    tar=$(rootfs_tar "$name" "$packages")
    log "importing $image"
    $podman import "$@" "$tar" "$image" >/dev/null
  fi
}
base_image "$runtime_image" bookworm-minbase "" \
  --change 'CMD ["bash"]'
# The environment of the public rust images: the mounted toolchain is found where they keep theirs.
base_image "$build_image" bookworm-minbase-gcc gcc,libc6-dev \
  --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' \
  --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# The build context as podman sees it: .dockerignore's entries (top-level paths and `**/name`
# patterns, all this repository uses) are left out.
context_hash() {
  local prune=() pattern
  while read -r pattern; do
    pattern=${pattern%/}
    case "$pattern" in
      '' | '#'*) continue ;;
      '**/'*) prune+=(-name "${pattern#\*\*/}" -o) ;;
      *) prune+=(-path "./$pattern" -o) ;;
    esac
  done <.dockerignore
  find . \( "${prune[@]}" -false \) -prune -o -type f -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64
}
context=$(context_hash)
bases="$($podman image inspect --format '{{.Id}}' "$runtime_image" "$build_image")"

for name in agent scheduler; do
  dockerfile="Dockerfile.$name"
  repo="localhost/wattwise-$name"
  tag=$(printf '%s\n' "$context" "$bases" "$(sha256sum "$dockerfile")" | sha256sum | cut -c1-16)
  image="$repo:$tag"
  if $podman image exists "$image"; then
    log "$image is up to date"
  else
    log "building $image (release build inside the image; incremental in $cache/target)"
    start=$(date +%s)
    $podman build --pull=never --network none --layers=false \
      -f "$dockerfile" \
      --build-arg RUST_IMAGE="$build_image" \
      --build-arg RUNTIME_IMAGE="$runtime_image" \
      --build-arg CARGO_NET_OFFLINE=true \
      -v "${CARGO_HOME:-$HOME/.cargo}:/usr/local/cargo:ro" \
      -v "${RUSTUP_HOME:-$HOME/.rustup}:/usr/local/rustup:ro" \
      -v "$cache/target:/src/target" \
      -t "$image" . >&2
    log "built $image in $(( $(date +%s) - start ))s"
    # Earlier builds of this image are superseded: drop them and their layers.
    $podman images --format '{{.Repository}}:{{.Tag}}' "$repo" | grep -vxF "$image" |
      xargs -r $podman rmi >/dev/null 2>&1 || true
  fi
  echo "$name=$image"
done
$podman image prune -f >/dev/null
