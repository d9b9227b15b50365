#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every cargo-fuzz target in fuzz/ once, then
# runs each for FUZZ_SECONDS (default 15) starting from its committed seed
# corpus (fuzz/corpus/<target>/). Fails on the first crash, leak, timeout or
# OOM; libFuzzer leaves the reproducer in fuzz/artifacts/<target>/ (commit it
# into the corpus once the bug is fixed: tests/fuzz_corpus.rs replays every
# corpus file on stable).
#
# New inputs found during the run go to a temporary directory, so the
# committed corpora stay small and the work tree stays clean.
#
# Uses nightly when it is installed (AddressSanitizer needs -Zsanitizer).
# Without nightly it falls back to `--sanitizer none` on stable, which
# cargo-fuzz supports: panics and aborts are still found, memory errors are
# not (wasp's parsers are safe Rust, so that loses little).
#
# Env: FUZZ_SECONDS (per target, default 15), FUZZ_TARGETS (space-separated
# subset, default all), FUZZ_PROFILE (`dev`, the default: unoptimised, about
# 40% less build time on a cold cache, which dominates a short smoke run;
# `release`: cargo-fuzz's optimised build, 10-20x the executions per second).
# Both keep debug assertions and overflow checks on. Cache fuzz/target
# between CI runs to skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECONDS:-15}
profile=${FUZZ_PROFILE:-dev}
targets=${FUZZ_TARGETS:-manifest netlink_reply http_response standin_request vmstate inotify_events env_file}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    san=()
    echo "fuzz-smoke: $(cargo +nightly --version), AddressSanitizer" >&2
else
    fuzz=(cargo fuzz)
    san=(-s none)
    echo "fuzz-smoke: no nightly toolchain; stable build without a sanitizer" >&2
fi

case $profile in
dev) san+=(--dev) ;;
release) ;;
*)
    echo "fuzz-smoke: FUZZ_PROFILE must be dev or release, not '$profile'" >&2
    exit 2
    ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$SECONDS
# One build for all targets (they share fuzz/target).
"${fuzz[@]}" build "${san[@]}"
echo "fuzz-smoke: build took $((SECONDS - start))s" >&2

failed=()
for t in $targets; do
    if [ ! -d "fuzz/corpus/$t" ]; then
        echo "fuzz-smoke: no seed corpus fuzz/corpus/$t" >&2
        failed+=("$t")
        continue
    fi
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    log="$work/$t.log"
    # First corpus dir receives new inputs; the committed one is read only.
    if "${fuzz[@]}" run "${san[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        echo "fuzz-smoke: $t ok: ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?} in ${secs}s"
    else
        echo "fuzz-smoke: $t FAILED; last output:" >&2
        tail -n 60 "$log" >&2
        ls -1 "fuzz/artifacts/$t" >&2 || true
        failed+=("$t")
    fi
done

echo "fuzz-smoke: total $((SECONDS - start))s" >&2
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: crashes in: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
