#!/usr/bin/env bash
# The test command: installs what the tests need, builds everything, runs unit, property and
# root-only integration tests (real namespaces, taps, veths, captures).
#
#   sudo bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the integration tests create network namespaces" >&2; exit 1; }
bash tests/install-deps.sh
cargo build --workspace --bins --tests --quiet
# Root-only tests must not silently skip here.
export VSWITCH_REQUIRE_ROOT_TESTS=1
cargo test --workspace --quiet -- --test-threads="${VSWITCH_TEST_THREADS:-2}"
