#!/usr/bin/env bash
# Builds kube-apiserver, kube-scheduler and kube-controller-manager v1.20.2 from Debian bookworm's
# `kubernetes` source package (offline, Debian's Go 1.19) and caches them; later runs return at once
# (a cache missing any of the three rebuilds all of them once).
# Cache: ${XDG_CACHE_HOME:-~/.cache}/wattwise/kubernetes-v1.20.2/bin/
set -euo pipefail

VERSION=v1.20.2
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/wattwise/kubernetes-$VERSION"
BIN="$CACHE/bin"
BINARIES=(kube-apiserver kube-scheduler kube-controller-manager)
cached=1
for b in "${BINARIES[@]}"; do
  [ -x "$BIN/$b" ] && "$BIN/$b" --version >/dev/null 2>&1 || cached=0
done
if [ "$cached" = 1 ]; then
  echo "build-kube: cached $("$BIN/kube-apiserver" --version) in $BIN"
  exit 0
fi

t0=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/wattwise-kube-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A private apt configuration with deb-src, so /etc/apt stays untouched.
mkdir -p "$work/apt/lists/partial"
echo "deb-src http://deb.debian.org/debian bookworm main" > "$work/apt/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
          -o "Dir::State::Lists=$work/apt/lists" -o "Debug::NoLocking=1")
echo "build-kube: fetching Debian's kubernetes source package"
apt-get "${APT_OPTS[@]}" update -qq
( cd "$work" && apt-get "${APT_OPTS[@]}" source -qq --download-only kubernetes >/dev/null )
( cd "$work" && dpkg-source -x --no-check ./kubernetes_*.dsc src >/dev/null )
src="$work/src"

# The vendored reflect2 1.0.1 breaks on Go >= 1.18; Debian's 1.0.2 is a drop-in replacement.
rm -rf "$src/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"

echo "build-kube: building ${BINARIES[*]} $VERSION (about 7.5 minutes on 2 cores)"
export GOROOT=/usr/lib/go-1.19 PATH="/usr/lib/go-1.19/bin:$PATH" GOFLAGS=-mod=vendor GOPROXY=off \
       GO111MODULE=on GOCACHE="$work/gocache" GOPATH="$work/gopath" \
       KUBE_GIT_VERSION=$VERSION KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean \
       KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
make -C "$src" WHAT="${BINARIES[*]/#/cmd/}" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; echo "build-kube: build failed" >&2; exit 1; }

# Binaries are built in $work and each is renamed into $BIN only after the whole build succeeded, so
# processes using a cached binary (another checkout's tests) keep working during a rebuild.
mkdir -p "$BIN"
for b in "${BINARIES[@]}"; do
  out=$(find "$src/_output" -type f -name "$b" -perm -u+x | head -n1)
  [ -n "$out" ] || { echo "build-kube: $b not produced" >&2; exit 1; }
  cp "$out" "$BIN/.$b.tmp"
done
for b in "${BINARIES[@]}"; do mv "$BIN/.$b.tmp" "$BIN/$b"; done
echo "build-kube: built $("$BIN/kube-apiserver" --version) in $(( $(date +%s) - t0 ))s -> $BIN"
