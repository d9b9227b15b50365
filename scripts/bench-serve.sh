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
# Sums and counts of the daemon's histograms: clone phases, and the
# request's time in the daemon (route /v1/clones).
scrape() {
  curl -sf --unix-socket "$S" http://wasp/metrics | awk '
    /^wasp_spawn_duration_seconds_(sum|count)/ || /^wasp_http_request_duration_seconds_(sum|count)\{route="\/v1\/clones"\}/ {
      k=$1; sub(/_(sum|count)\{/, "{", k); if ($1 ~ /_sum\{/) s[k]=$2; else c[k]=$2 }
    END { for (k in s) print k, s[k], c[k] }' | sort
}
# Means (ms) between two scrapes.
means() {
  join "$1" "$2" | awk '{ n=$5-$3; if (n > 0) printf "  %-58s %8.3f ms (n=%d)\n", $1, 1000*($4-$2)/n, n }'
}
scrape > "$W/m0"
echo "== $N requests of 1 clone, one at a time"
oha --no-tui -n "$N" -c 1 --unix-socket "$S" -m POST -H "$H" -d "$BODY" http://wasp/v1/clones
scrape > "$W/m1"
echo "-- the daemon's means over these requests"
means "$W/m0" "$W/m1"
echo "== 100 concurrent requests of 1 clone each"
oha --no-tui -n 100 -c 100 --unix-socket "$S" -m POST -H "$H" -d "$BODY" http://wasp/v1/clones
scrape > "$W/m2"
echo "-- the daemon's means over these requests"
means "$W/m1" "$W/m2"
echo "== where a request's time goes (100 requests one at a time, by curl; the first 10 dropped)"
: > "$W/bodies"
for _ in $(seq 100); do
  curl -s --unix-socket "$S" -X POST -H "$H" -d "$BODY" http://wasp/v1/clones >> "$W/bodies"
  echo >> "$W/bodies"
done
python3 - "$W/bodies" "$W/daemon.log" <<'PY'
import json, re, statistics as st, sys
bodies = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][10:]
log = open(sys.argv[2]).read()
handler = [float(m) for m in re.findall(r'route=/v1/clones status=201 ms=([0-9.]+)', log)][-len(bodies):]
wall = [b["summary"]["wall_ms"] for b in bodies]
total = [b["clones"][0]["total_ms"] for b in bodies]
def row(name, xs):
    print(f"  {name:<44} p50 {st.median(xs):7.3f} ms  mean {st.mean(xs):7.3f} ms")
row("in the daemon (request log ms)", handler)
row("engine: submit to answer (summary.wall_ms)", wall)
row("the clone: admission to ready (total_ms)", total)
row("HTTP layer: daemon minus engine", [a - b for a, b in zip(handler, wall)])
row("engine: wall minus the clone", [a - b for a, b in zip(wall, total)])
PY
echo "== wasp bench serve: 300 requests of 1 clone, one at a time"
"$WASP" bench serve --server unix:"$S" --snapshot snap --requests 300 --ready tcp:22 --ttl-s 2
if [ -n "${SOAK:-}" ]; then
  echo "== wasp bench serve: a ${SOAK} s soak, 2 clients, ttl_s 1"
  "$WASP" bench serve --server unix:"$S" --snapshot snap --duration "$SOAK" --concurrency 2 \
    --ready tcp:22 --ttl-s 1 --window 10 ${PLOT:+--plot "$PLOT"}
  echo "daemon: $(ls /proc/$PID/fd | wc -l) fds, $(awk '/VmRSS/ {print $2 " KiB RSS"}' /proc/$PID/status); slot netns: $(ip netns list | grep -c "wasp-$POOL-")"
fi
grep -c 'status=201' "$W/daemon.log" | sed 's/^/requests answered 201: /'
