#!/usr/bin/env bash
# The test command: installs what the tests need, builds everything, runs unit, property and
# root-only integration tests (real namespaces, taps, veths, captures) and the manifest checks.
#
#   bash tests/run.sh            as root (the integration tests create network namespaces),
#                                or with sudo
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the integration tests create network namespaces): sudo bash tests/run.sh" >&2; exit 1; }
bash tests/install-deps.sh
# shellcheck source=deploy/lib/cargo.sh
. deploy/lib/cargo.sh
find_cargo
echo "== building the workspace and its tests (debug)"
"$CARGO" build --workspace --bins --tests
# The upgrade test (restart.rs) replaces the daemon with another build: the same sources with
# another build id, which only the vswitchd binary reads (option_env! in the bin crate), so
# this relinks one binary twice (a few seconds) and then restores the normal one.
target="${CARGO_TARGET_DIR:-target}"
t0=$SECONDS
echo "== building vswitchd-upgrade (second vswitchd build, VSWITCH_BUILD_ID=upgrade-…)"
VSWITCH_BUILD_ID="upgrade-$(date -u +%Y%m%d%H%M%S)" "$CARGO" build --quiet -p vswitch --bin vswitchd
cp "$target/debug/vswitchd" "$target/debug/vswitchd-upgrade"
"$CARGO" build --quiet -p vswitch --bin vswitchd
echo "== vswitchd-upgrade ready ($((SECONDS - t0)) s extra)"
# Root-only tests must not silently skip here.
export VSWITCH_REQUIRE_ROOT_TESTS=1
echo "== cargo test --workspace"
"$CARGO" test --workspace --quiet -- --test-threads="${VSWITCH_TEST_THREADS:-2}"
