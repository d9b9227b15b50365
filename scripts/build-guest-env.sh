#!/usr/bin/env bash
# Builds wasp-guest-env as a static x86_64 binary for guest images and checks
# that it is static: glibc's static libc with crt-static on the gnu target (no
# musl target is installable on these machines). Prints the binary's path.
# `--target` keeps RUSTFLAGS off build scripts and proc-macros (thiserror),
# which cannot be static. Symbols are stripped: the guest image wants it small.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C strip=symbols" \
    cargo build --release --locked -p wasp-guest-env --target "$target" >&2
bin="target/$target/release/wasp-guest-env"

fail() { echo "build-guest-env.sh: $bin: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "not built"
command -v readelf >/dev/null || fail "readelf (binutils) is needed to check linkage"
if readelf -lW "$bin" | grep -q 'INTERP'; then
    fail "has a PT_INTERP (dynamic loader): not static"
fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then
    fail "needs shared libraries: $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ' | tr '\n' ' ')"
fi
# It runs with no loader and no libraries.
"$bin" --version >/dev/null || fail "does not run"
echo "build-guest-env.sh: static: no PT_INTERP, no NEEDED; $(stat -c %s "$bin") bytes" >&2
echo "$bin"
