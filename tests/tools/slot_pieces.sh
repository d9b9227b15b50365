#!/bin/bash
# What each piece of a slot costs in kernel memory: builds N of one piece
# at a time in scratch namespaces (named wasptest-pc-*) and reads the
# growth of unreclaimable kernel memory (SUnreclaim + KernelStack +
# PageTables + SecPageTables + VmallocUsed + Percpu, as `wasp bench` does)
# per piece. Everything it makes is removed at the end. Needs root,
# iproute2 and nft; never touches the machine's own network namespace.
#   bash tests/tools/slot_pieces.sh [N]      (default N = 400)
# Other work on the host moves these figures: run it on a quiet machine,
# or several times, and read them as a breakdown, not to the KiB.
set -eu
N=${1:-400}
P=wasptest-pc-$$
kmem() {
    awk '/^(SUnreclaim|KernelStack|PageTables|SecPageTables|VmallocUsed|Percpu):/ {s += $2} END {print s}' /proc/meminfo
}
settle() { sync; sleep 1; }   # a measurement tool, not a test: let RCU frees land
cleanup() {
    for n in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$n"; done
}
trap cleanup EXIT
report() { printf '%-58s %8.1f KiB\n' "$1" "$(echo "($3 - $2) / $N" | bc -l)"; }

# 1. Named network namespaces with lo up (a slot's netns, empty).
settle; a=$(kmem)
for i in $(seq 1 "$N"); do echo "netns add $P-ns-$i"; done | ip -batch -
for i in $(seq 1 "$N"); do ip -n "$P-ns-$i" link set lo up; done
settle; b=$(kmem); report "netns (named, lo up)" "$a" "$b"

# 2. The slot's nf_tables ruleset (NAT chains load conntrack for the netns).
for i in $(seq 1 "$N"); do ip netns exec "$P-ns-$i" nft -f "$(dirname "$0")/../golden/nft_slot.nft"; done
settle; c=$(kmem); report "nf_tables slot ruleset (+ the netns' NAT/conntrack)" "$b" "$c"

# 3. ip_forward=1 in each.
for i in $(seq 1 "$N"); do ip netns exec "$P-ns-$i" sysctl -qw net.ipv4.ip_forward=1; done
settle; d=$(kmem); report "net.ipv4.ip_forward=1" "$c" "$d"

# 4. A persistent tap in each.
for i in $(seq 1 "$N"); do ip -n "$P-ns-$i" tuntap add dev tap0 mode tap; done
settle; e=$(kmem); report "tap" "$d" "$e"

# 5. veth pairs, host ends in one host netns, peers in the slots.
ip netns add "$P-host"
ip -n "$P-host" link set lo up
ip -n "$P-host" link add wasp0 type bridge mcast_snooping 0
ip -n "$P-host" addr add 10.0.0.1/16 dev wasp0
ip -n "$P-host" link set wasp0 up
settle; f=$(kmem)
for i in $(seq 1 "$N"); do
    echo "link add wr$i numtxqueues 1 numrxqueues 1 type veth peer name veth0 netns $P-ns-$i numtxqueues 1 numrxqueues 1"
    echo "link set wr$i up"
done | ip -n "$P-host" -batch -
for i in $(seq 1 "$N"); do ip -n "$P-ns-$i" link set veth0 up; done
settle; g=$(kmem); report "veth pair (both ends up, IPv6 link-local on)" "$f" "$g"

# 6. Bridge layout: each host end an isolated port of wasp0.
for i in $(seq 1 "$N"); do echo "link set wr$i master wasp0"; echo "link set wr$i type bridge_slave isolated on"; done | ip -n "$P-host" -batch -
settle; h=$(kmem); report "bridge port (isolated)" "$g" "$h"
for i in $(seq 1 "$N"); do echo "link set wr$i nomaster"; done | ip -n "$P-host" -batch -
settle; h2=$(kmem)

# 7. Routed layout: a /32 route and a permanent neighbour entry per slot.
for i in $(seq 1 "$N"); do
    ip4="10.0.$((i / 250)).$((i % 250 + 2))"
    echo "route add $ip4/32 dev wr$i src 10.0.0.1"
    echo "neigh replace $ip4 lladdr 02:00:00:00:00:01 dev wr$i nud permanent"
done | ip -n "$P-host" -batch -
settle; j=$(kmem); report "routed: /32 route + permanent neighbour entry" "$h2" "$j"

# 8. The same veth pairs made without IPv6 link-local addresses
#    (addrgenmode none on both ends): what IPv6 costs per pair (only on a
#    kernel with IPv6).
if [ ! -d /proc/sys/net/ipv6 ]; then
    echo "no IPv6 in this kernel: a link costs no IPv6 state"
    echo "N = $N"
    exit 0
fi
for i in $(seq 1 "$N"); do echo "link del wr$i"; done | ip -n "$P-host" -batch -
settle; k=$(kmem)
for i in $(seq 1 "$N"); do
    echo "link add wr$i numtxqueues 1 numrxqueues 1 addrgenmode none type veth peer name veth0 netns $P-ns-$i numtxqueues 1 numrxqueues 1 addrgenmode none"
    echo "link set wr$i up"
done | ip -n "$P-host" -batch -
for i in $(seq 1 "$N"); do ip -n "$P-ns-$i" link set veth0 up; done
settle; l=$(kmem); report "veth pair, addrgenmode none (no IPv6 link-local)" "$k" "$l"
echo "N = $N; nf_conntrack entry: $(awk '/^nf_conntrack / {print $4 " bytes"}' /proc/slabinfo 2>/dev/null || echo unknown)"
