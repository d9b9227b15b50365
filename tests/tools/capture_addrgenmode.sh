#!/bin/sh
# Captures what iproute2 sends to turn a link's IPv6 address generation
# off, for tests/netlink_golden.rs (tests/golden/ip_addrgenmode.strace.txt).
# Runs in a scratch netns (unshare -n); never touches the machine's own
# network. Needs root, strace and iproute2.
#   sh tests/tools/capture_addrgenmode.sh > tests/golden/ip_addrgenmode.strace.txt
set -eu
unshare -n sh -eu -c '
cap() { echo "== $*"; strace -e trace=sendmsg -e write=3 -s 8192 "$@" 2>&1 >/dev/null | grep "^ | "; }
# wp-x-3 becomes ifindex 2 (lo is 1), veth0 ifindex 3.
ip link add wp-x-3 type veth peer name veth0
cap ip link set dev wp-x-3 addrgenmode none
cap ip link set dev veth0 addrgenmode none
'
