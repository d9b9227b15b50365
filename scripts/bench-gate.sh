#!/usr/bin/env bash
# The benchmark regression gate (see docs/benchmarks.md, "Regression gate").
#
# Measures the gate benches (testkit/src/bench/gate.rs, in `cargo bench --bench
# pure`) on the base commit (extracted under target/bench-gate/base) and
# then on this work tree, in the same run on
# the same machine, and fails when a bench's median is slower than the
# base's by more than the threshold with 95% confidence (the lower bound of
# criterion's confidence interval of the change). A bench that regresses is
# measured once more, base and head, and fails the gate only if it regresses
# again: a real slowdown shows twice, a burst of load from a neighbour
# rarely does.
#
# Environment:
#   WASP_BENCH_BASE             base commit (default HEAD~1; CI of a branch: its merge base)
#   WASP_BENCH_GATE_THRESHOLD   percent (default 25)
#   WASP_BENCH_GATE_ALLOW_NEW   1: accept benches the base does not have, loudly
#   WASP_BENCH_INJECT_SLOWDOWN  NAME: the head run does bench NAME's work twice
#                               (proves the gate fails; never set in CI)
#   WASP_BENCH_MEASURE          criterion timing flags (default below)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${WASP_BENCH_BASE:-HEAD~1}
THRESHOLD=${WASP_BENCH_GATE_THRESHOLD:-25}
GATE_BENCHES='^(nft_table_batch_encode|slot nft batch encode|slot rtnetlink messages|http parse 204|http parse 200 json)$'
read -r -a MEASURE <<<"${WASP_BENCH_MEASURE:---warm-up-time 1 --measurement-time 3}"
OUT=$ROOT/target/bench-gate
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CRITERION_HOME=$OUT/criterion
INJECT=${WASP_BENCH_INJECT_SLOWDOWN:-}
unset WASP_BENCH_INJECT_SLOWDOWN
t0=$SECONDS

if ! base_rev=$(git rev-parse --verify --quiet "$BASE^{commit}"); then
    echo "bench gate: FAILED: no baseline: the base commit '$BASE' is not in this clone; fetch it (git fetch --deepen=1, or the branch's base) or set WASP_BENCH_BASE to the commit to compare against" >&2
    exit 1
fi
echo "bench gate: base $(git log -1 --format='%h %s' "$base_rev"), head $(git log -1 --format=%h HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), threshold ${THRESHOLD}%"

rm -rf "$OUT"
mkdir -p "$OUT"
# The base's tree as plain files (no worktree is registered in the repo).
mkdir -p "$OUT/base"
git archive "$base_rev" | tar -x -C "$OUT/base"
# git archive dates files at the commit; cargo would take the previous
# base's artifacts at this path for fresh. Date them now: always rebuilt.
find "$OUT/base" -type f -exec touch {} +

# The head's gate tool, kept aside: the base's build shares the target dir
# and re-links target/release/wasp (the head's next cargo run re-links it).
cargo build --release --quiet --bin wasp
cp "$CARGO_TARGET_DIR/release/wasp" "$OUT/wasp"
WASP=$OUT/wasp

# run_pair FILTER: base with --save-baseline, stale results cleared, head
# compared against it; the gate's verdict is the exit status.
run_pair() {
    local filter=$1
    rm -f "$OUT/regressed"
    echo "== bench gate: base ($((SECONDS - t0)) s)"
    (cd "$OUT/base" && cargo bench --quiet --bench pure -- --save-baseline base --noplot "${MEASURE[@]}" "$filter") \
        >"$OUT/base.log" 2>&1 || {
        tail -20 "$OUT/base.log" >&2
        echo "bench gate: FAILED: no baseline: the benches did not run on the base commit $base_rev (log: $OUT/base.log)" >&2
        exit 1
    }
    "$WASP" bench gate --clear "$CRITERION_HOME" || exit 1
    echo "== bench gate: head ($((SECONDS - t0)) s)"
    WASP_BENCH_INJECT_SLOWDOWN=$INJECT cargo bench --quiet --bench pure -- \
        --baseline-lenient base --noplot "${MEASURE[@]}" "$filter" >"$OUT/head.log" 2>&1 || {
        tail -20 "$OUT/head.log" >&2
        echo "bench gate: FAILED: the benches did not run on the head (log: $OUT/head.log)" >&2
        exit 1
    }
    "$WASP" bench gate "$CRITERION_HOME" --threshold "$THRESHOLD" --regressed-filter "$OUT/regressed"
}

if run_pair "$GATE_BENCHES"; then
    echo "bench gate: passed in $((SECONDS - t0)) s"
    exit 0
fi
if [ ! -s "$OUT/regressed" ]; then
    # Not a regression: a missing baseline, stale or unreadable results.
    echo "bench gate: FAILED in $((SECONDS - t0)) s" >&2
    exit 1
fi
# Confirm: measure only the regressed benches again, base and head.
echo "bench gate: confirming $(cat "$OUT/regressed") with a second measurement"
if run_pair "$(cat "$OUT/regressed")"; then
    echo "bench gate: passed in $((SECONDS - t0)) s (the first regression did not reproduce)"
    exit 0
fi
echo "bench gate: FAILED in $((SECONDS - t0)) s (the regression reproduced)" >&2
exit 1
