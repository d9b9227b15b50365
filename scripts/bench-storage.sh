#!/usr/bin/env bash
# The reflink store on an ext4 host (docs/benchmarks.md, "Clone disks on
# ext4: the reflink store"). Runs as root. Makes a scratch ext4 filesystem
# in a sparse loop image (wasp-bench-ext4.img under $Q), so the figures do
# not depend on the machine's root fs; on it: a stand-in snapshot with
# 256 MiB of memory and a dense 1 GiB rootfs, `wasp storage init` on
# $Q/mnt/rt (placing the snapshot in the store), then ONE `wasp bench
# clone` run: COUNT clones prepared in the store and held at once (disk
# held against as many full copies), side by side with CMP clones by
# copy-file-range on the ext4 and the seed's `cp` (3 runs) there.
# Everything it made is removed at the end (also on failure).
set -u
Q=${Q:-/var/tmp/wasp-bench-storage}
COUNT=${COUNT:-1000}
CMP=${CMP:-5}
WASP=${WASP:-target/release/wasp}
cd "$(dirname "$0")/.."
mkdir -p "$Q/mnt"
cleanup() {
    "$WASP" storage remove --runtime-dir "$Q/mnt/rt" >/dev/null 2>&1
    mountpoint -q "$Q/mnt" && umount "$Q/mnt"
    rm -f "$Q/wasp-bench-ext4.img"
    rmdir "$Q/mnt" "$Q" 2>/dev/null
}
trap cleanup EXIT
truncate -s 8G "$Q/wasp-bench-ext4.img"
mkfs.ext4 -q -F "$Q/wasp-bench-ext4.img"
mount -o loop "$Q/wasp-bench-ext4.img" "$Q/mnt"
M=$Q/mnt
"$WASP" snapshot synth --out "$M/golden" --mem-mib 256 --rootfs-mib 1024 >/dev/null
"$WASP" storage init --runtime-dir "$M/rt" --size 4G --snapshot "$M/golden"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
"$WASP" bench clone --snapshot "$M/rt/snapshots/golden" --runtime-dir "$M/rt" \
    --count "$COUNT" --hold \
    --compare-snapshot "$M/golden" --compare-runtime-dir "$M/ext4rt" --compare-count "$CMP" \
    --baseline-runs 3 "$@"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
"$WASP" storage status --runtime-dir "$M/rt"
