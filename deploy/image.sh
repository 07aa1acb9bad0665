#!/usr/bin/env bash
# The container image, built and checked without a registry or a daemon (buildah, podman).
#
#   bash deploy/image.sh build   makes local base images (debootstrap bookworm minbase, imported
#                                with buildah), then `buildah bud` of the Dockerfile with the
#                                host's Rust toolchain mounted read-only into the build stage
#   bash deploy/image.sh test    in the image: `vswitchd --help`, `vswitchctl --help`,
#                                `CNI_COMMAND=VERSION /opt/cni/bin/vswitch`, then deploy/demo.sh's
#                                isolation checks against a vswitchd running in a container of it
#
# As root (rootful buildah/podman storage; the test creates network namespaces). The image is
# $VSWITCH_IMAGE (default localhost/vswitch:dev).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${VSWITCH_IMAGE:-localhost/vswitch:dev}
CACHE=${VSWITCH_CACHE:-/var/cache/vswitch}
BASE=localhost/vswitch-base:bookworm      # stands in for debian:bookworm-slim
RUST=localhost/vswitch-rust:bookworm      # stands in for rust:1-bookworm (toolchain mounted)
[ "$(id -u)" = 0 ] || { echo "run as root (or with sudo): bash deploy/image.sh ${1:-build}" >&2; exit 1; }
# podman raises nofile/nproc to 1048576 in containers by default, which needs CAP_SYS_RESOURCE
# that a sandboxed root may lack; stay below the usual hard limits instead.
export PODMAN_LIMITS="--ulimit nofile=4096:4096 --ulimit nproc=4096:4096"
start=$(date +%s)
phase() { echo "== image [$(( $(date +%s) - start )) s]: $*"; }

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

make_base_images() {
  # shellcheck source=deploy/lib/rootfs.sh
  . deploy/lib/rootfs.sh
  local tar=$CACHE/bookworm-minbase.tar ctr
  if ! have_image "$BASE"; then
    ensure_minbase_tar "$tar"
    phase "importing $tar as $BASE (documentation dropped, as in debian:bookworm-slim)"
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$tar" / >/dev/null
    buildah run "$ctr" -- sh -c '
      chmod 755 /
      printf "%s\n" "path-exclude /usr/share/doc/*" "path-include /usr/share/doc/*/copyright" \
        "path-exclude /usr/share/man/*" "path-exclude /usr/share/info/*" \
        "path-exclude /usr/share/locale/*" "path-include /usr/share/locale/locale.alias" \
        > /etc/dpkg/dpkg.cfg.d/slim
      find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete
      find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
      rm -rf /usr/share/man/* /usr/share/info/* /var/lib/apt/lists/* /var/cache/apt/*.bin'
    buildah config --cmd bash "$ctr"
    buildah commit --rm -q "$ctr" "$BASE" >/dev/null
  fi
  if ! have_image "$RUST"; then
    phase "making $RUST: $BASE with rust:1-bookworm's environment; the toolchain is mounted at build time"
    ctr=$(buildah from "$BASE")
    # The machine's own extra CA certificates (a TLS-intercepting proxy, if any), so the build
    # stage reaches crates.io as the host does; the runtime image does not get them.
    if [ -d /usr/local/share/ca-certificates ]; then
      buildah copy "$ctr" /usr/local/share/ca-certificates /usr/local/share/ca-certificates >/dev/null
    fi
    buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --rm -q "$ctr" "$RUST" >/dev/null
  fi
}

install_image_deps() {
  # shellcheck source=deploy/lib/apt.sh
  . deploy/lib/apt.sh
  want buildah "builds the image from the Dockerfile, without a daemon"
  want podman "runs the image (image.sh test, demo.sh --image)"
  want runc "the OCI runtime podman uses"
  want debootstrap "makes the Debian root filesystem the local base images come from"
  install_wanted "the container image (deploy/image.sh)"
}

build() {
  install_image_deps
  make_base_images
  # shellcheck source=deploy/lib/cargo.sh
  . deploy/lib/cargo.sh
  find_cargo
  local cargo_bin rustup
  cargo_bin=$(dirname "$CARGO")
  rustup=$(cd "${RUSTUP_HOME:-$HOME/.rustup}" && pwd)
  phase "buildah bud -> $IMAGE (toolchain: $cargo_bin, $rustup; cargo prints its progress)"
  buildah bud --layers --network host \
    --build-arg RUST_IMAGE="$RUST" --build-arg RUNTIME_IMAGE="$BASE" \
    -v "$rustup:/usr/local/rustup:ro" -v "$cargo_bin:/usr/local/cargo/bin:ro" \
    -t "$IMAGE" .
  phase "built $IMAGE: $(image_size)"
}

image_size() {
  podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f MB (%d bytes)\n", $1 / 1e6, $1 }'
}

test_image() {
  install_image_deps
  have_image "$IMAGE" || { echo "no image $IMAGE: run bash deploy/image.sh build first" >&2; exit 1; }
  local out
  phase "podman run $IMAGE --help (vswitchd)"
  podman run --rm --network none $PODMAN_LIMITS "$IMAGE" --help | sed -n 1,3p
  phase "podman run --entrypoint vswitchctl $IMAGE --help"
  podman run --rm --network none $PODMAN_LIMITS --entrypoint vswitchctl "$IMAGE" --help | sed -n 1,3p
  phase "podman run -e CNI_COMMAND=VERSION --entrypoint /opt/cni/bin/vswitch $IMAGE"
  out=$(podman run --rm --network none $PODMAN_LIMITS -e CNI_COMMAND=VERSION --entrypoint /opt/cni/bin/vswitch "$IMAGE")
  echo "$out"
  grep -q '"supportedVersions"' <<<"$out" || { echo "VERSION printed no supportedVersions" >&2; exit 1; }
  phase "podman run --entrypoint vswitch-install-cni $IMAGE (the DaemonSet's init container)"
  check_install_cni
  phase "deploy/demo.sh --image $IMAGE (vswitchd in the container, checks from the host)"
  bash deploy/demo.sh --image "$IMAGE"
  phase "image test passed; $IMAGE is $(image_size)"
}

# The init container against a scratch "host": plugin installed, this node's vswitchd config
# picked (the default for an unknown node), this node's per-node CNI config written for Multus.
check_install_cni() {
  local t
  t=$(mktemp -d /tmp/vswitch-install-cni.XXXXXX)
  mkdir -p "$t/host" "$t/conf" "$t/cni" "$t/out-a" "$t/out-z"
  echo 'workers = 1' > "$t/conf/default.toml"
  echo 'workers = 2' > "$t/conf/node-a.toml"
  echo '{"name": "pods-l3"}' > "$t/cni/pods-l3.node-a.conf"
  echo '{"name": "pods-l3", "other": true}' > "$t/cni/pods-l3.node-b.conf"
  for node in a z; do
    podman run --rm --network none $PODMAN_LIMITS -e NODE_NAME=node-$node -v "$t/host:/host" \
      -v "$t/conf:/etc/vswitch:ro" -v "$t/cni:/etc/vswitch-cni:ro" -v "$t/out-$node:/run/vswitchd" \
      --entrypoint vswitch-install-cni "$IMAGE"
  done
  local ok=1
  [ -x "$t/host/opt/cni/bin/vswitch" ] || ok=0
  grep -qx 'workers = 2' "$t/out-a/vswitchd.toml" || ok=0
  grep -qx 'workers = 1' "$t/out-z/vswitchd.toml" || ok=0
  grep -qx '{"name": "pods-l3"}' "$t/host/etc/cni/multus/net.d/pods-l3.conf" || ok=0
  [ ! -e "$t/host/etc/cni/net.d/10-vswitch.conflist" ] || ok=0
  "$t/host/opt/cni/bin/vswitch" </dev/null >/dev/null 2>&1 && ok=0   # no CNI_COMMAND: must fail
  CNI_COMMAND=VERSION "$t/host/opt/cni/bin/vswitch" </dev/null | grep -q supportedVersions || ok=0
  rm -rf "$t"
  [ "$ok" = 1 ] || { echo "vswitch-install-cni did not install what it should" >&2; exit 1; }
  echo "   plugin installed and runs on the host; node-a got its config, node-z the default"
}

case "${1:-}" in
  build) build ;;
  test) test_image ;;
  *) echo "usage: bash deploy/image.sh build|test" >&2; exit 2 ;;
esac
