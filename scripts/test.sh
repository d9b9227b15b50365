#!/usr/bin/env bash
# The README's test command. Run it as root on Debian 12: it installs the
# test-only tools that are missing (iproute2, nftables, xfsprogs, … used only
# as independent readers and peers, never by wasp itself; zsh and fish check
# the completion scripts' syntax), fetches the pinned
# Firecracker for the real-VMM tests, then runs every test.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in ip:iproute2 nft:nftables mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs objdump:binutils filefrag:e2fsprogs conntrack:conntrack zsh:zsh fish:fish; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing test tools: ${need[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    else
        echo "test.sh: missing test tools (${need[*]}); install them or run as root" >&2
    fi
fi

if [ -z "${WASP_FIRECRACKER:-}" ]; then
    WASP_FIRECRACKER=$(bash scripts/fetch-firecracker.sh)
    export WASP_FIRECRACKER
fi
"$WASP_FIRECRACKER" --version | head -1

exec cargo test --workspace --all-targets "$@"
