# Sourced by .ci/fresh-machine.sh and deploy/image.sh: a Debian 12 minbase root filesystem
# (debootstrap: Essential and required packages plus apt), made once and kept as a tarball.
#
#   ensure_minbase_tar TARBALL     makes TARBALL unless it exists (delete it to refresh)

ensure_minbase_tar() {
  local tar=$1 tmp
  [ -s "$tar" ] && return 0
  if ! command -v debootstrap >/dev/null; then
    # shellcheck source=deploy/lib/apt.sh
    . "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
    want debootstrap "makes the Debian base root filesystem"
    install_wanted "a Debian root filesystem (debootstrap)"
  fi
  mkdir -p "$(dirname "$tar")"
  tmp=$(mktemp -d /var/tmp/vswitch-debootstrap.XXXXXX)
  echo "== debootstrap --variant=minbase bookworm (about a minute; kept in $tar)"
  if ! debootstrap --variant=minbase bookworm "$tmp" >"$tmp.log" 2>&1; then
    tail -20 "$tmp.log" >&2
    rm -rf --one-file-system "$tmp" "$tmp.log"
    return 1
  fi
  rm -f "$tmp/var/cache/apt/archives/"*.deb
  chmod 755 "$tmp"   # mktemp made it 0700; it becomes the system's /
  tar --numeric-owner -C "$tmp" -cf "$tar.new" . && mv "$tar.new" "$tar"
  rm -rf --one-file-system "$tmp" "$tmp.log"
}
