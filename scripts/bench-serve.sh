#!/bin/bash
# Request-to-response latency of `wasp serve` measured with oha (a
# third-party HTTP load generator) over the daemon's unix socket, on the
# stand-in VMM (`ready: tcp:22`), in a private host netns and pool of its
# own; everything is removed at the end.
#
#   scripts/bench-serve.sh [WASP_BIN]     (default: target/release/wasp)
#
# Scenarios: N requests of 1 clone, one at a time (-c 1); 100 concurrent
# requests of 1 clone each (-c 100 -n 100). Each clone has ttl_s 2, so the
# pool stays warm. Prints oha's summaries and the daemon's per-phase means
# from /metrics.
set -euo pipefail
WASP=${1:-target/release/wasp}
N=${N:-300}
W=$(mktemp -d /tmp/wasp-bench-serve.XXXXXX)
HOST=wasp-benchserve-$$
POOL=bserve$$
S=$W/api.sock
cleanup() {
  [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  "$WASP" kill --all --state-dir "$W/state" --runtime-dir "$W/run" >/dev/null 2>&1 || true
  "$WASP" pool drain --force --pool "$POOL" --host-netns "$HOST" --state-dir "$W/state" --runtime-dir "$W/run" >/dev/null 2>&1 || true
  ip netns del "$HOST" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
"$WASP" snapshot synth --mem-mib 64 --rootfs-mib 4 --out "$W/snap" >/dev/null
"$WASP" serve --vmm standin --snapshot snap="$W/snap" --listen unix:"$S" \
  --host-netns "$HOST" --pool "$POOL" --state-dir "$W/state" --runtime-dir "$W/run" \
  --warm 128 --low-water 96 --high-water 512 --parallel 32 --max-count 100 \
  --kill-on-exit 2>"$W/daemon.log" &
PID=$!
# A benchmark script, not a test: wait for readiness by asking.
for _ in $(seq 600); do
  curl -sf --unix-socket "$S" http://wasp/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
BODY='{"snapshot":"snap","count":1,"ready":"tcp:22","ttl_s":2}'
H='Content-Type: application/json'
# Warm-up (first request opens the snapshot store).
curl -sf --unix-socket "$S" -X POST -H "$H" -d "$BODY" http://wasp/v1/clones >/dev/null
echo "== $N requests of 1 clone, one at a time"
oha --no-tui -n "$N" -c 1 --unix-socket "$S" -m POST -H "$H" -d "$BODY" http://wasp/v1/clones
echo "== 100 concurrent requests of 1 clone each"
oha --no-tui -n 100 -c 100 --unix-socket "$S" -m POST -H "$H" -d "$BODY" http://wasp/v1/clones
echo "== the daemon's phase means (ms) over every ready clone"
curl -sf --unix-socket "$S" http://wasp/metrics | awk '
  /^wasp_spawn_duration_seconds_sum/ { match($0, /phase="[a-z]+"/); p=substr($0, RSTART+7, RLENGTH-8); sum[p]=$2 }
  /^wasp_spawn_duration_seconds_count/ { match($0, /phase="[a-z]+"/); p=substr($0, RSTART+7, RLENGTH-8); cnt[p]=$2 }
  END { for (p in sum) if (cnt[p] > 0) printf "  %-8s %.3f\n", p, 1000*sum[p]/cnt[p] }'
grep -c 'status=201' "$W/daemon.log" | sed 's/^/requests answered 201: /'
