#!/usr/bin/env bash
# Interleaved before/after of `wasp bench spawn` (docs/benchmarks.md,
# "Engine"): N pairs per VMM, stand-in then Firecracker, before then after,
# each run's JSON in $Q/out. Copy each build's `wasp` and `wasp-standin`
# into $Q/before and $Q/after first. Runs as root; makes (once) a 2 GiB XFS
# reflink loop image at $Q/mnt for the runtime dir.
set -u
Q=${Q:-/var/tmp/wasp-q}
N=${N:-7}
cd "$(dirname "$0")/.."
: "${WASP_FIRECRACKER:=$(bash scripts/fetch-firecracker.sh)}"
export WASP_FIRECRACKER
if ! mountpoint -q "$Q/mnt"; then
    rm -f "$Q/x.img"
    truncate -s 2G "$Q/x.img" && mkfs.xfs -q -m reflink=1 "$Q/x.img" \
        && mkdir -p "$Q/mnt" && mount -o loop "$Q/x.img" "$Q/mnt"
fi
mkdir -p "$Q/out"
for i in $(seq 1 "$N"); do
    for vmm in standin firecracker; do
        for b in before after; do
            "$Q/$b/wasp" bench spawn --vmm "$vmm" --count 100 --json --runtime-dir "$Q/mnt" \
                > "$Q/out/$vmm-$b-$i.json" 2> "$Q/out/$vmm-$b-$i.err"
            echo "$vmm $b $i rc=$? load=$(cut -d' ' -f1 /proc/loadavg)"
        done
    done
done
