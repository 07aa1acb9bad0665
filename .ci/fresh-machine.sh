#!/usr/bin/env bash
# CI check: the repo's own install scripts are complete. In a Debian 12 minbase chroot
# (Essential and required packages and apt, plus the CA certificates and C toolchain every
# fresh machine of this kind has: see the baseline below), with the host's Rust toolchain
# bind-mounted read-only and nothing else installed, deploy/demo.sh installs its packages,
# builds and runs for real. A package the build or the demo needs and no script installs makes
# this fail.
#
#   bash .ci/fresh-machine.sh    (root; about 2 min with warm caches; a first run adds
#                                debootstrap and a cold release build, see README)
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
tar --numeric-owner -C "$ROOT" -xf "$ROOTFS_TAR"
chmod 755 "$ROOT"   # the chroot's /: apt's _apt user must traverse it
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

# 2. The baseline: minbase plus the few packages every fresh machine of this kind has and the
#    Rust toolchain itself presumes (TLS roots for crates.io, the C linker and libc objects),
#    with the machine's own extra CA certificates (part of the machine, like its resolv.conf).
#    All of it must be on a fresh machine's package list, or the chroot would assume packages a
#    new machine does not have. Everything else the scripts must install.
BASELINE="ca-certificates gcc libc6-dev"
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
# apt downloads as its sandbox user _apt (uid as in the chroot, not as on the host).
apt_uid=$(chroot "$ROOT" id -u _apt)
chown "$apt_uid" "$CACHE/apt-archives/partial"
rm -rf "$ROOT/var/lib/apt/lists/partial" && mkdir -m 700 "$ROOT/var/lib/apt/lists/partial"
chown "$apt_uid" "$ROOT/var/lib/apt/lists/partial"
phase "baseline: apt-get install $BASELINE (in the chroot)"
unshare --mount --propagation private bash -euo pipefail -c '
  mount --bind "$1/apt-archives" "$2/var/cache/apt/archives"
  mount -t proc proc "$2/proc"
  mount --rbind /dev "$2/dev"
  chroot "$2" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $3 >/dev/null"
' _ "$CACHE" "$ROOT" "$BASELINE"
if [ -r "$FRESH_LIST" ]; then
  missing_from_fresh=$(comm -23 \
    <(chroot "$ROOT" dpkg-query -W -f '${Package}\n' | sort -u) \
    <(awk -F'\t' '$1 == "apt" { sub(/:.*/, "", $2); print $2 }' "$FRESH_LIST" | sort -u))
  if [ -n "$missing_from_fresh" ]; then
    echo "fresh-machine check: the chroot's baseline has packages a fresh machine lacks:" $missing_from_fresh >&2
    exit 1
  fi
  phase "baseline: all $(chroot "$ROOT" dpkg-query -W -f '${Package}\n' | wc -l) packages of the chroot are on a fresh machine ($FRESH_LIST)"
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
  # The chroot'"'"'s / must be a mount point: `ip netns exec` makes it a slave mount.
  mount --bind "$ROOT" "$ROOT"
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
  if [ -f "$ROOT/src/deploy/install-demo-deps.sh" ]; then
    phase "bash deploy/install-demo-deps.sh (in the chroot; deploy/demo.sh runs it too)"
    in_root "bash deploy/install-demo-deps.sh"
    key=$( { chroot "$ROOT" dpkg-query -W -f "\${Package} \${Version}\n" | sort; echo "$rustc_version"; } | sha256sum | cut -c1-16)
    mkdir -p "$CACHE/target-$key"
    find "$CACHE" -maxdepth 1 -name "target-*" ! -name "target-$key" -exec rm -rf {} +
    mount --bind "$CACHE/target-$key" "$ROOT/src/target"
  else
    key="none (a tree without deploy/install-demo-deps.sh builds from scratch)"
  fi
  phase "bash deploy/demo.sh (in the chroot; target dir keyed by its package set: $key)"
  in_root "bash deploy/demo.sh"
'
phase "passed: the install scripts suffice for the build and the demo on a minbase system"
