#!/usr/bin/env bash
# The system packages the tests and benchmarks need (Debian 12, Ubuntu 22.04+): the demo's
# (which include the build's), plus capture decoders, traffic generators, etcd, container
# runtimes, and a Python venv with kubernetes-validate for the manifest test. Installs what is
# missing and says why.
#
#   bash tests/install-deps.sh               (as root, or with sudo)
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=deploy/install-demo-deps.sh
. "$here/../deploy/install-demo-deps.sh"

# Where tests/tests/deploy_manifests.rs finds kubernetes-validate (offline Kubernetes schemas).
K8S_VALIDATE_VENV=${VSWITCH_TEST_VENV:-/opt/vswitch-tests/venv}
K8S_VALIDATE_VERSION=1.37.0

want_demo_deps
want tshark "decodes VXLAN/IPIP in the overlay tests' captures (our wire format against Wireshark's)"
want iperf3 "TCP throughput through the switch (tests/tests/tcp.rs, overlay_tcp.rs, vswitch-perf)"
want ethtool "reads pod interface offloads in the tests"
want python3-scapy "crafts malformed and spoofed frames (tests/tests/malformed.rs, antispoof.rs)"
want containernetworking-plugins "host-local and bridge: delegated IPAM and vswitch-perf's CNI baseline"
want openvswitch-switch "vswitch-perf's Open vSwitch userspace peers (ovsdb-server and ovs-vswitchd, started by the harness with its own database and run directory; a system OVS the package starts under systemd is never touched)"
want etcd-server "etcd for cluster mode (tests/tests/overlay_cluster.rs; only the binary is used)"
want prometheus "promtool checks the metrics endpoint's output (tests/tests/trace.rs; on a systemd machine the package also starts a Prometheus server on :9090, which the tests never use)"
# Container runtimes for tests/tests/cni_runtimes.rs: podman 4 with its CNI backend (named
# explicitly: podman would accept netavark as its network stack), containerd + ctr, runc, and a
# static busybox for the containers' root filesystem.
want podman "runs containers whose network is our CNI plugin (cni_runtimes.rs)"
want containerd "containerd + ctr with our CNI plugin (cni_runtimes.rs)"
want runc "the OCI runtime podman and containerd use"
want busybox-static "the test containers' root filesystem"
want python3-venv "a venv for kubernetes-validate (tests/tests/deploy_manifests.rs)"
install_wanted "the tests (tests/run.sh)"

if [ ! -x "$K8S_VALIDATE_VENV/bin/kubernetes-validate" ] ||
  ! "$K8S_VALIDATE_VENV/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: $K8S_VALIDATE_VERSION"; then
  echo "== pip: kubernetes-validate $K8S_VALIDATE_VERSION into $K8S_VALIDATE_VENV (validates deploy/*.yaml against Kubernetes' schemas, offline)"
  /usr/bin/python3 -m venv "$K8S_VALIDATE_VENV"
  "$K8S_VALIDATE_VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
else
  echo "   kubernetes-validate $K8S_VALIDATE_VERSION present in $K8S_VALIDATE_VENV"
fi
