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
have protoc   || need+=(protobuf-compiler)
[ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
# etcd for the overlay cluster-mode tests (tests/tests/overlay_cluster.rs); only the binary is used.
[ -x /usr/bin/etcd ] || need+=(etcd-server)
# promtool (Debian ships it in `prometheus`) checks the metrics endpoint's output
# (vswitch/src/observe/metrics.rs, tests/tests/trace.rs). On a machine booted with systemd the
# package also starts a Prometheus server on :9090; tests never use it.
have promtool || need+=(prometheus)
/usr/bin/python3 -c 'import scapy' >/dev/null 2>&1 || need+=(python3-scapy)
# Container runtimes for tests/tests/cni_runtimes.rs: podman 4 with its CNI backend (named
# explicitly: podman would accept netavark as its network stack), containerd 1.6 + ctr, runc,
# and a static busybox for the containers' root filesystem.
have podman     || need+=(podman)
[ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
have containerd || need+=(containerd)
have runc       || need+=(runc)
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
installed busybox-static || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
