#!/usr/bin/env bash
# The system packages `cargo build` needs (Debian 12, Ubuntu 22.04+), beyond a Rust toolchain
# (>= 1.80, from rustup; Debian's own rustc is older) and a C toolchain (gcc, libc6-dev: the
# linker rustc calls), which a Rust machine already has. Installs what is missing, says why.
#
#   bash deploy/install-build-deps.sh        (as root, or with sudo)
set -euo pipefail
# shellcheck source=deploy/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

want_build_deps() {
  want protobuf-compiler "protoc: etcd-client's build script generates its gRPC code with it"
  want libprotobuf-dev "google/protobuf/*.proto that etcd's .proto files import (protoc alone has none)"
  want gcc "the linker rustc calls, and cc for crates with C parts"
  want libc6-dev "C runtime objects and headers for linking"
  want ca-certificates "TLS roots: cargo downloads crates over HTTPS"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  want_build_deps
  install_wanted "building (cargo build)"
fi
