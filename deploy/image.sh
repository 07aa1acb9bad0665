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
      printf "%s\n" "path-exclude /usr/share/doc/*" "path-include /usr/share/doc/*/copyright" \
        "path-exclude /usr/share/man/*" "path-exclude /usr/share/info/*" \
        "path-exclude /usr/share/locale/*" "path-include /usr/share/locale/locale.alias" \
        > /etc/dpkg/dpkg.cfg.d/slim
      find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete
      rm -rf /usr/share/man/* /usr/share/info/* /var/lib/apt/lists/* /var/cache/apt/*.bin'
    buildah config --cmd bash "$ctr"
    buildah commit --rm -q "$ctr" "$BASE" >/dev/null
  fi
  if ! have_image "$RUST"; then
    phase "making $RUST: $BASE with rust:1-bookworm's environment; the toolchain is mounted at build time"
    ctr=$(buildah from "$BASE")
    buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --rm -q "$ctr" "$RUST" >/dev/null
  fi
}

build() {
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
  have_image "$IMAGE" || { echo "no image $IMAGE: run bash deploy/image.sh build first" >&2; exit 1; }
  local out
  phase "podman run $IMAGE --help (vswitchd)"
  podman run --rm --network none "$IMAGE" --help | head -3
  phase "podman run --entrypoint vswitchctl $IMAGE --help"
  podman run --rm --network none --entrypoint vswitchctl "$IMAGE" --help | head -3
  phase "podman run -e CNI_COMMAND=VERSION --entrypoint /opt/cni/bin/vswitch $IMAGE"
  out=$(podman run --rm --network none -e CNI_COMMAND=VERSION --entrypoint /opt/cni/bin/vswitch "$IMAGE")
  echo "$out"
  grep -q '"supportedVersions"' <<<"$out" || { echo "VERSION printed no supportedVersions" >&2; exit 1; }
  phase "deploy/demo.sh --image $IMAGE (vswitchd in the container, checks from the host)"
  bash deploy/demo.sh --image "$IMAGE"
  phase "image test passed; $IMAGE is $(image_size)"
}

case "${1:-}" in
  build) build ;;
  test) test_image ;;
  *) echo "usage: bash deploy/image.sh build|test" >&2; exit 2 ;;
esac
