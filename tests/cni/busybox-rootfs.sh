#!/bin/sh
# Builds a minimal container root filesystem from Debian's busybox-static: /bin/busybox, one
# symlink per applet, the mount points runtimes expect and a root user. No registry involved.
#
#   sh tests/cni/busybox-rootfs.sh DIR [TARBALL]
#
# DIR must not exist yet or be empty. With TARBALL, also writes a tar of DIR (for `podman import`).
set -eu
dir=${1:?usage: busybox-rootfs.sh DIR [TARBALL]}
tarball=${2:-}
bb=/bin/busybox
[ -x "$bb" ] || { echo "busybox-rootfs: $bb missing: apt-get install busybox-static" >&2; exit 1; }
# A dynamically linked busybox (package `busybox`) would need the host's libc inside the rootfs.
if ldd "$bb" >/dev/null 2>&1; then
  echo "busybox-rootfs: $bb is dynamically linked: apt-get install busybox-static" >&2
  exit 1
fi
mkdir -p "$dir"
for d in bin sbin usr/bin usr/sbin etc proc sys dev tmp root run var/tmp; do
  mkdir -p "$dir/$d"
done
chmod 1777 "$dir/tmp" "$dir/var/tmp"
cp "$bb" "$dir/bin/busybox"
for applet in $("$bb" --list); do
  [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$dir/etc/passwd"
printf 'root:x:0:\n' >"$dir/etc/group"
: >"$dir/etc/hosts"
: >"$dir/etc/resolv.conf"
if [ -n "$tarball" ]; then
  tar -C "$dir" -cf "$tarball" .
fi
