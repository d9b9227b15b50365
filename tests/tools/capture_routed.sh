#!/bin/sh
# Captures what iproute2 sends for the routed layout's messages, for
# tests/netlink_golden.rs (tests/golden/ip_routed.strace.txt). Runs every
# command in a scratch netns (unshare -n) and a scratch peer netns; never
# touches the machine's own network. Needs root, strace and iproute2.
#   sh tests/tools/capture_routed.sh > tests/golden/ip_routed.strace.txt
set -eu
peer="wasptest-caprouted-$$"
ip netns add "$peer"
trap 'ip netns del "$peer"' EXIT
unshare -n sh -eu -c '
cap() { echo "== $*"; strace -e trace=sendmsg -e write=3 -s 8192 "$@" 2>&1 >/dev/null | grep "^ | "; }
ip link set lo up
# wasp0 (the bridge that holds the gateway address, no ports) becomes
# ifindex 2, wp-x-3 ifindex 3 (the peer is fd 4 for ip).
ip link add wasp0 type bridge
ip addr add 10.0.0.1/16 dev wasp0
ip link set wasp0 up
cap ip link add wp-x-3 numtxqueues 1 numrxqueues 1 address 0a:77:61:73:70:01 type veth peer name veth0 netns '"$peer"' numtxqueues 1 numrxqueues 1 address 02:77:61:73:70:09
ip link set wp-x-3 up
cap ip route add 10.0.0.9/32 dev wp-x-3 src 10.0.0.1
'
