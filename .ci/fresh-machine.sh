#!/usr/bin/env bash
# CI check: the repo's own install scripts are complete. In a Debian 12 minbase chroot (only
# Essential/required packages and apt: less than a fresh machine has, see the baseline check
# below), with the host's Rust toolchain bind-mounted read-only and nothing else installed,
# deploy/demo.sh installs its packages, builds and runs for real. A package the build or the demo
# needs and no script installs makes this fail.
#
#   bash .ci/fresh-machine.sh            (root; about 2 min warm, 8-10 min cold, see README)
#
# Caches (under $VSWITCH_CACHE, default /var/cache/vswitch), none of which can hide a
# missing package:
#   bookworm-minbase.tar   the debootstrap result, unpacked afresh every run (delete to refresh)
#   apt-archives/          downloaded .debs (apt still installs every package into the chroot)
#   cargo-home/            the crates.io registry for the chroot's cargo
#   target-<key>/          the chroot's target dir, keyed by the hash of the chroot's complete
#                          package list and rustc version: a build is reused only by a chroot
#                          with exactly the same packages, so a dropped install step changes the
#                          key and forces a build from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ "$(id -u)" = 0 ] || { echo "fresh-machine check: needs root (chroot, namespaces)" >&2; exit 1; }
CACHE=${VSWITCH_CACHE:-/var/cache/vswitch}
SUITE=bookworm
ROOTFS_TAR=$CACHE/$SUITE-minbase.tar
# The packages a fresh machine of this kind has (the workplace's image list, `apt<TAB>name<TAB>version`).
FRESH_LIST=${VSWITCH_FRESH_PACKAGES:-/work/.library/env/packages/installed-rust.txt}
start=$(date +%s)
phase() { echo "== fresh-machine [$(( $(date +%s) - start )) s]: $*"; }

mkdir -p "$CACHE/apt-archives/partial" "$CACHE/cargo-home/bin"

# 1. The base system, made once.
# shellcheck source=deploy/lib/rootfs.sh
. deploy/lib/rootfs.sh
ensure_minbase_tar "$ROOTFS_TAR"

ROOT=$(mktemp -d /var/tmp/vswitch-ci-root.XXXXXX)
cleanup() { rm -rf --one-file-system "$ROOT"; }
trap cleanup EXIT
phase "unpacking $ROOTFS_TAR into $ROOT"
tar -C "$ROOT" -xf "$ROOTFS_TAR"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

# 2. The baseline must be a subset of a fresh machine: otherwise the chroot would assume
#    packages a new machine does not have.
if [ -r "$FRESH_LIST" ]; then
  missing_from_fresh=$(comm -23 \
    <(chroot "$ROOT" dpkg-query -W -f '${Package}\n' | sort -u) \
    <(awk -F'\t' '$1 == "apt" { sub(/:.*/, "", $2); print $2 }' "$FRESH_LIST" | sort -u))
  if [ -n "$missing_from_fresh" ]; then
    echo "fresh-machine check: the chroot's baseline has packages a fresh machine lacks:" $missing_from_fresh >&2
    exit 1
  fi
  phase "baseline: all $(chroot "$ROOT" dpkg-query -W -f '${Package}\n' | wc -l) minbase packages are on a fresh machine ($FRESH_LIST)"
else
  phase "baseline: $FRESH_LIST not readable here, subset check skipped"
fi

# 3. The repo as a fresh clone has it (tracked and new files, nothing ignored: no target/).
mkdir -p "$ROOT/src/target"
git ls-files -z --cached --others --exclude-standard |
  tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$ROOT/src" -xf -

# 4. Run inside a private mount namespace: every mount (and the demo's /run/netns entries) goes
#    away with it.
RUSTUP=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_BIN=$(dirname "$(command -v cargo)")
rustc_version=$("$CARGO_BIN/rustc" -vV)
export ROOT CACHE RUSTUP CARGO_BIN rustc_version start
unshare --mount --propagation private bash -euo pipefail -c '
  phase() { echo "== fresh-machine [$(( $(date +%s) - start )) s]: $*"; }
  ro_bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; }
  mount -t proc proc "$ROOT/proc"
  mount -t sysfs sysfs "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"
  mount -t tmpfs tmpfs "$ROOT/run"; mkdir -p "$ROOT/run/netns" "$ROOT/run/lock"
  mount -t tmpfs tmpfs "$ROOT/tmp"
  mount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
  mkdir -p "$ROOT/root/.cargo"
  mount --bind "$CACHE/cargo-home" "$ROOT/root/.cargo"
  ro_bind "$CARGO_BIN" "$ROOT/root/.cargo/bin"
  [ -d "$RUSTUP" ] && ro_bind "$RUSTUP" "$ROOT/root/.rustup"
  in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb CARGO_TERM_COLOR=never \
      PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      bash -euo pipefail -c "cd /src && $1"
  }
  phase "bash deploy/install-demo-deps.sh (in the chroot)"
  in_root "bash deploy/install-demo-deps.sh"
  key=$( { chroot "$ROOT" dpkg-query -W -f "\${Package} \${Version}\n" | sort; echo "$rustc_version"; } | sha256sum | cut -c1-16)
  mkdir -p "$CACHE/target-$key"
  find "$CACHE" -maxdepth 1 -name "target-*" ! -name "target-$key" -exec rm -rf {} +
  mount --bind "$CACHE/target-$key" "$ROOT/src/target"
  phase "bash deploy/demo.sh (in the chroot; target dir keyed by its package set: $key)"
  in_root "bash deploy/demo.sh"
'
phase "passed: the install scripts suffice for the build and the demo on a minbase system"
