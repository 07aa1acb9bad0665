#!/usr/bin/env bash
# Demo: three isolated networks that all use 192.168.1.0/24 on one vswitchd, each with a pod at
# the same static IP 192.168.1.205 and a second pod. Pings inside a network succeed, pings across
# networks fail, a broadcast flood in one network never reaches another; then the FDBs.
#
#   bash deploy/demo.sh                as root (it creates network namespaces), or with sudo:
#                                      installs what it needs, builds (release), runs, cleans up
#   bash deploy/demo.sh --image IMG    the same checks against vswitchd running in the container
#                                      image IMG (podman, privileged, in the demo's node
#                                      namespace); builds nothing (deploy/image.sh test uses it)
#
# Everything it creates is named vdemo-* and removed on exit; traffic stays inside those
# network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=""
case "${1:-}" in
  --image) IMAGE=${2:?--image needs an image name} ;;
  "") ;;
  *) echo "usage: bash deploy/demo.sh [--image IMAGE]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "run as root (it creates network namespaces): sudo bash deploy/demo.sh" >&2; exit 1; }

bash deploy/install-demo-deps.sh
if [ -z "$IMAGE" ]; then
  # shellcheck source=deploy/lib/cargo.sh
  . deploy/lib/cargo.sh
  find_cargo
  echo "== building vswitchd and vswitchctl (release; a first build takes a few minutes)"
  build_start=$(date +%s)
  "$CARGO" build --release --bins -p vswitch
  echo "== built in $(( $(date +%s) - build_start )) s"
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
P=vdemo
WORK=$(mktemp -d /tmp/vswitch-demo.XXXXXX)
SOCK=$WORK/vswitchd.sock
NETS="tenant-a tenant-b tenant-c"
DPID=""
CTR=$P-vswitchd-$$
if [ -n "$IMAGE" ]; then
  CTL="podman exec $CTR vswitchctl --socket $SOCK"
else
  CTL="$BIN/vswitchctl --socket $SOCK"
fi

cleanup() {
  set +e
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  [ -n "$IMAGE" ] && podman rm -f -t 5 "$CTR" >/dev/null 2>&1
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do ip netns del "$ns"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/vswitchd.toml" <<TOML
state_dir = "$WORK/state"
socket = "$SOCK"

[[network]]
name = "tenant-a"
subnet = "192.168.1.0/24"
attach = "tap"

[[network]]
name = "tenant-b"
subnet = "192.168.1.0/24"
attach = "tap"

[[network]]
name = "tenant-c"
subnet = "192.168.1.0/24"
attach = "af_packet"
TOML

ip netns add $P-node
if [ -n "$IMAGE" ]; then
  # As the DaemonSet runs it: privileged, the host's PID namespace, the node's network namespace
  # (here the demo's node namespace stands in for the host network), /run/netns shared so pod
  # namespaces created later are visible inside, the socket/state dir mounted from the host.
  echo "== starting vswitchd in a container of $IMAGE"
  # shellcheck disable=SC2086 # PODMAN_LIMITS: see deploy/image.sh
  podman run -d --rm --name "$CTR" ${PODMAN_LIMITS:---ulimit nofile=4096:4096 --ulimit nproc=4096:4096} --privileged --pid=host --network "ns:/run/netns/$P-node" \
    -v /run/netns:/run/netns:rslave -v "$WORK:$WORK" "$IMAGE" --config "$WORK/vswitchd.toml" >/dev/null
  for _ in $(seq 100); do $CTL status >/dev/null 2>&1 && break; sleep 0.1; done
else
  ip netns exec $P-node "$BIN/vswitchd" --config "$WORK/vswitchd.toml" > "$WORK/vswitchd.log" 2>&1 &
  DPID=$!
  for _ in $(seq 50); do $CTL status >/dev/null 2>&1 && break; sleep 0.1; done
fi
$CTL status || { echo "vswitchd did not answer; its log:" >&2
  if [ -n "$IMAGE" ]; then podman logs "$CTR" >&2; else cat "$WORK/vswitchd.log" >&2; fi; exit 1; }

echo; echo "== attaching pods (each network: pod1 = 192.168.1.205, pod2 = 192.168.1.1x)"
i=0
for net in $NETS; do
  i=$((i + 1))
  for pod in 1 2; do
    ns=$P-${net#tenant-}$pod
    ip netns add "$ns"; ip -n "$ns" link set lo up
    ip=192.168.1.205; [ $pod = 2 ] && ip=192.168.1.1$i
    $CTL port add --netns "$ns" --network "$net" --ifname eth1 --ip $ip --route default >/dev/null
  done
done
$CTL network list; echo; $CTL port list

ping_ok() { ip netns exec "$1" ping -n -q -c 2 -i 0.2 -W 1 "$2" >/dev/null 2>&1; }
fails=0
check() { # expect(ok|fail) from-ns dst label
  local got=fail; ping_ok "$2" "$3" && got=ok
  local mark="PASS"; [ "$got" = "$1" ] || { mark="FAIL"; fails=$((fails + 1)); }
  printf '  %-4s %-40s expected %-4s got %s\n' "$mark" "$4" "$1" "$got"
}

echo; echo "== pings inside each network (expected to succeed)"
i=0
for net in $NETS; do
  i=$((i + 1)); t=${net#tenant-}
  check ok $P-${t}2 192.168.1.205 "$net pod2 -> 192.168.1.205"
  check ok $P-${t}1 192.168.1.1$i  "$net pod1 -> 192.168.1.1$i"
  check ok $P-${t}1 192.168.1.1    "$net pod1 -> gateway 192.168.1.1"
done
echo; echo "== pings across networks (expected to fail)"
check fail $P-a1 192.168.1.12 "tenant-a pod1 -> 192.168.1.12 (tenant-b only)"
check fail $P-a1 192.168.1.13 "tenant-a pod1 -> 192.168.1.13 (tenant-c only)"
check fail $P-b2 192.168.1.11 "tenant-b pod2 -> 192.168.1.11 (tenant-a only)"
check fail $P-c2 192.168.1.12 "tenant-c pod2 -> 192.168.1.12 (tenant-b only)"

echo; echo "== broadcast flood in tenant-a while tcpdump listens in tenant-b and tenant-c pods"
pids=""
for ns in $P-b1 $P-b2 $P-c1 $P-c2; do
  ip netns exec $ns tcpdump -n -p -U -i eth1 -w "$WORK/$ns.pcap" 'arp or ip' >/dev/null 2>&1 &
  pids="$pids $!"
done
sleep 1
ip netns exec $P-a1 sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0
ip netns exec $P-a2 ping -n -q -b -c 20 -i 0.05 192.168.1.255 >/dev/null 2>&1 || true
ip netns exec $P-a2 arping -q -c 5 -w 2 -I eth1 192.168.1.77 >/dev/null 2>&1 || true
sleep 0.5
kill $pids 2>/dev/null; wait $pids 2>/dev/null || true
amac=$(ip -n $P-a2 link show eth1 | awk '/link\/ether/ {print $2}')
for ns in $P-b1 $P-b2 $P-c1 $P-c2; do
  leaked=$(tcpdump -n -e -r "$WORK/$ns.pcap" 2>/dev/null | grep -ci "$amac" || true)
  mark=PASS; [ "$leaked" = 0 ] || { mark=FAIL; fails=$((fails + 1)); }
  printf '  %-4s %-40s frames from tenant-a pod2 (%s): %s\n' "$mark" "$ns captured" "$amac" "$leaked"
done

echo; echo "== forwarding databases"
for net in $NETS; do $CTL fdb show $net; echo; done
echo "== counters"; $CTL stats

echo
if [ "$fails" = 0 ]; then echo "demo: all checks passed (isolation held)"; else echo "demo: $fails check(s) FAILED"; exit 1; fi
