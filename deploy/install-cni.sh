#!/bin/sh
# The DaemonSet's init container (deploy/kubernetes/vswitch.yaml): installs the CNI plugin on the
# node and picks this node's configuration. Runs in the vswitch image with the host's CNI
# directories mounted under /host.
#
#   NODE_NAME          this node (downward API: spec.nodeName)
#   /etc/vswitch       ConfigMap vswitchd-config: <node>.toml, else default.toml
#   /etc/vswitch-cni   ConfigMap vswitch-cni-config: <network>.<node>.conf files become
#                      /host/etc/cni/multus/net.d/<network>.conf (Multus reads a NAD without
#                      spec.config from there: per-node IPAM ranges); primary.conflist, if
#                      present, becomes /host/etc/cni/net.d/10-vswitch.conflist (vswitch as the
#                      node's only CNI, no Multus)
#   /run/vswitchd      emptyDir shared with the vswitchd container: vswitchd.toml
set -eu
: "${NODE_NAME:?NODE_NAME must be set (downward API spec.nodeName)}"
HOST=${HOST_ROOT:-/host}
CONF=${VSWITCHD_CONFIG_DIR:-/etc/vswitch}
CNI_CONF=${VSWITCH_CNI_CONFIG_DIR:-/etc/vswitch-cni}
OUT=${VSWITCHD_CONFIG_OUT:-/run/vswitchd}

# Plugin: copy then rename, so a kubelet running the old binary never sees a half-written one.
mkdir -p "$HOST/opt/cni/bin"
cp /opt/cni/bin/vswitch "$HOST/opt/cni/bin/.vswitch.new"
chmod 0755 "$HOST/opt/cni/bin/.vswitch.new"
mv -f "$HOST/opt/cni/bin/.vswitch.new" "$HOST/opt/cni/bin/vswitch"
echo "installed $HOST/opt/cni/bin/vswitch"

conf=$CONF/$NODE_NAME.toml
[ -f "$conf" ] || conf=$CONF/default.toml
mkdir -p "$OUT"
cp "$conf" "$OUT/vswitchd.toml"
echo "vswitchd config for node $NODE_NAME: $conf"

if [ -d "$CNI_CONF" ]; then
  for f in "$CNI_CONF"/*."$NODE_NAME".conf; do
    [ -f "$f" ] || continue
    net=$(basename "$f" ".$NODE_NAME.conf")
    mkdir -p "$HOST/etc/cni/multus/net.d"
    cp "$f" "$HOST/etc/cni/multus/net.d/.$net.conf.new"
    mv -f "$HOST/etc/cni/multus/net.d/.$net.conf.new" "$HOST/etc/cni/multus/net.d/$net.conf"
    echo "wrote $HOST/etc/cni/multus/net.d/$net.conf"
  done
  if [ -f "$CNI_CONF/primary.conflist" ]; then
    mkdir -p "$HOST/etc/cni/net.d"
    cp "$CNI_CONF/primary.conflist" "$HOST/etc/cni/net.d/.10-vswitch.conflist.new"
    mv -f "$HOST/etc/cni/net.d/.10-vswitch.conflist.new" "$HOST/etc/cni/net.d/10-vswitch.conflist"
    echo "wrote $HOST/etc/cni/net.d/10-vswitch.conflist"
  fi
fi
