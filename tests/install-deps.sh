#!/usr/bin/env bash
# Installs the system packages vswitch's tests, demo and benchmarks use (Debian/Ubuntu).
# Skips apt entirely when everything is already there.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip       || need+=(iproute2)
have ping     || need+=(iputils-ping)
have arping   || need+=(iputils-arping)
have tcpdump  || need+=(tcpdump)
have tshark   || need+=(tshark)
have iperf3   || need+=(iperf3)
have nsenter  || need+=(util-linux)
have ethtool  || need+=(ethtool)
have pgrep    || need+=(procps)
[ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
/usr/bin/python3 -c 'import scapy' >/dev/null 2>&1 || need+=(python3-scapy)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
