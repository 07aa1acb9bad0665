# Sourced by the scripts that build: finds cargo (Rust >= 1.80 from rustup) for root, also when
# the script runs under sudo, whose secure_path hides the invoking user's ~/.cargo/bin.
#
#   find_cargo     sets CARGO (path of the cargo binary) and exports RUSTUP_HOME when needed
#
# Under sudo the build runs as root with the invoking user's toolchain and root's own CARGO_HOME
# (so root never writes into the user's ~/.cargo); target/ then belongs to root, as with any
# `sudo cargo`.

find_cargo() {
  if CARGO=$(command -v cargo 2>/dev/null); then
    return 0
  fi
  local user_home="" bin
  if [ -n "${SUDO_USER:-}" ]; then user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6); fi
  for bin in ${CARGO_HOME:+"$CARGO_HOME/bin"} "$HOME/.cargo/bin" ${user_home:+"$user_home/.cargo/bin"}; do
    [ -x "$bin/cargo" ] || continue
    CARGO=$bin/cargo
    # rustup's proxies find the toolchains through RUSTUP_HOME (default: $HOME/.rustup, which
    # under sudo is root's, not the invoking user's).
    if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$bin/../../.rustup" ]; then
      RUSTUP_HOME=$(cd "$bin/../../.rustup" && pwd)
      export RUSTUP_HOME
    fi
    export PATH="$bin:$PATH"
    echo "== using $CARGO${RUSTUP_HOME:+ (RUSTUP_HOME=$RUSTUP_HOME)}"
    return 0
  done
  cat >&2 <<'MSG'
cargo not found. vswitch needs Rust >= 1.80 (Debian's rustc package is older); install it with
rustup (see the Rust project's install page), then run this again. Under sudo, the invoking
user's ~/.cargo/bin/cargo is used when root has none.
MSG
  return 1
}
