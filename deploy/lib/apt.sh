# Sourced by the install scripts: collect the Debian/Ubuntu packages a purpose needs, each with
# the reason, then install the missing ones in one apt-get call and say what and why.
#
#   want PACKAGE "why it is needed"   (repeatable)
#   install_wanted "purpose"          (prints the list; installs what dpkg does not have)
#
# Packages are checked by name with dpkg, not by probing for a command: protobuf-compiler brings
# `protoc` but not the well-known .proto files of libprotobuf-dev, so a command check would pass
# while the build fails.

_want_pkgs=()
_want_why=()

want() {
  local i
  for i in "${!_want_pkgs[@]}"; do [ "${_want_pkgs[$i]}" = "$1" ] && return 0; done
  _want_pkgs+=("$1")
  _want_why+=("$2")
}

_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

install_wanted() {
  local purpose=$1 missing=() i
  echo "== packages for $purpose:"
  for i in "${!_want_pkgs[@]}"; do
    local state="present"
    _installed "${_want_pkgs[$i]}" || { state="to install"; missing+=("${_want_pkgs[$i]}"); }
    printf '   %-28s %-11s %s\n' "${_want_pkgs[$i]}" "$state" "${_want_why[$i]}"
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "   all ${#_want_pkgs[@]} present, nothing to install"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "installing packages needs root: run as root, or with sudo" >&2
    return 1
  fi
  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
}
