#!/usr/bin/env bash
# The system packages deploy/demo.sh needs: the build's, plus the tools the demo runs. Nothing
# for the tests (no container runtimes, etcd, tshark: tests/install-deps.sh installs those).
#
#   bash deploy/install-demo-deps.sh         (as root, or with sudo)
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=deploy/install-build-deps.sh
. "$here/install-build-deps.sh"

want_demo_deps() {
  want_build_deps
  want iproute2 "ip: network namespaces for the node and pods; vswitchd configures pod interfaces with it"
  want util-linux "nsenter: vswitchd runs ip inside pod namespaces"
  want iputils-ping "ping: the isolation checks"
  want iputils-arping "arping: the ARP flood in one network"
  want tcpdump "captures in the other networks' pods during the flood"
  want procps "sysctl inside a pod namespace"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  want_demo_deps
  install_wanted "the demo (deploy/demo.sh)"
fi
