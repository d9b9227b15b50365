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
#
# Knobs (environment): N (default 300); ONLY=soak skips the latency runs;
# SOAK=SECS adds a churn soak by `wasp bench serve` (SOAK_C clients,
# default 2, ttl_s 1), sampling per 10 s window the daemon's fds, RSS,
# the pool's slot netns, conntrack entries in the pool's host netns and
# the state dir's files; PLOT_TIME=FILE.svg draws its p50/p99 per window
# against time, PLOT=FILE.svg its CDFs; WARM and LOW_WATER set the pool's
# warm size and low-water mark (default 128 and 96; a burst that takes the
# free slots below the low water mark builds new slots meanwhile);
# TMPFS_STATE=1 (default) puts the state dir (clone records) on a tmpfs, as
# /run is on a systemd host (on ext4, creating a record per clone under
# churn spends its time in ext4's inode allocator); SERVE_ARGS are added to `wasp
# serve`'s; STORE=1 puts the runtime dir (and the snapshot) on a reflink
# store (`wasp storage init`, a 1 GiB sparse XFS image in the work dir), so
# clone disks are reflinked instead of copied; PERF=FILE records `perf
# record -g` of the daemon and its VMMs over the 100 concurrent requests. VMM=firecracker runs real
# Firecracker ($WASP_FIRECRACKER; implies STORE=1) on a golden snapshot of
# wasp's built-in test guest (128 MiB, made here by `wasp snapshot
# create`), with `ready: running`, and only the N one-at-a-time requests
# by `wasp bench serve` (STANDBY=K adds `--standby K`).
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
  mountpoint -q "$W/state" && umount "$W/state"
  # The store's loop device detaches on unmount (LO_FLAGS_AUTOCLEAR).
  mountpoint -q "$W/run" && umount "$W/run"
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/state"
[ "${TMPFS_STATE:-1}" = 1 ] && mount -t tmpfs -o mode=0700,size=64m wasp-bench-state "$W/state"
VMM=${VMM:-standin}
READY=tcp:22
VMM_ARGS=()
if [ "$VMM" = firecracker ]; then
  STORE=1
  READY=running
  FC=${WASP_FIRECRACKER:?name the firecracker binary in WASP_FIRECRACKER}
  VMM_ARGS=(--firecracker "$FC")
fi
SNAP=$W/snap
if [ -n "${STORE:-}" ]; then
  mkdir -p "$W/run"
  "$WASP" storage init --runtime-dir "$W/run" --image "$W/store.img" --size 1G >/dev/null
  SNAP=$W/run/snapshots/snap
fi
if [ "$VMM" = firecracker ]; then
  # wasp's built-in test guest (src/standin/testguest.rs), written here:
  # it prints a marker on the serial console and idles in hlt.
  python3 - "$W/testguest.elf" <<'PY'
import struct, sys
MARKER = b"wasp-testguest ready\n"; LOAD = 0x200000; EH, PH = 64, 56; CO = EH + PH
c = bytearray([0x48, 0x8d, 0x35, 0, 0, 0, 0]); after = len(c)
c += bytes([0xb9]) + struct.pack("<I", len(MARKER))
c += bytes([0x66, 0xba, 0xf8, 0x03, 0xac, 0xee, 0xe2, 0xfc, 0xf4, 0xeb, 0xfd])
c[3:7] = struct.pack("<i", len(c) - after); c += MARKER
total = CO + len(c)
f = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
f += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, LOAD + CO, EH, 0, 0, EH, PH, 1, 64, 0, 0)
f += struct.pack("<IIQQQQQQ", 1, 5, 0, LOAD, LOAD, total, total, 0x1000)
open(sys.argv[1], "wb").write(f + bytes(c))
PY
  head -c 1048576 /dev/zero | tr '\0' 'Z' > "$W/rootfs.img"
  "$WASP" snapshot create --vmm firecracker "${VMM_ARGS[@]}" --kernel "$W/testguest.elf" \
    --rootfs "$W/rootfs.img" --mem-mib 128 --ready 'serial:^wasp-testguest ready' --timeout 30 \
    --out "$SNAP" --host-netns "$HOST" --pool "$POOL" --state-dir "$W/state" --runtime-dir "$W/run" >/dev/null
else
  "$WASP" snapshot synth --mem-mib 64 --rootfs-mib 4 --out "$SNAP" >/dev/null
fi
"$WASP" serve --vmm "$VMM" "${VMM_ARGS[@]}" ${STANDBY:+--standby "$STANDBY"} --snapshot snap="$SNAP" --listen unix:"$S" \
  --host-netns "$HOST" --pool "$POOL" --state-dir "$W/state" --runtime-dir "$W/run" \
  --warm "${WARM:-128}" --low-water "${LOW_WATER:-96}" --high-water 512 --parallel 32 --max-count 100 \
  --kill-on-exit ${SERVE_ARGS:-} 2>"$W/daemon.log" &
PID=$!
# A benchmark script, not a test: wait for readiness by asking.
for _ in $(seq 600); do
  curl -sf --unix-socket "$S" http://wasp/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
BODY='{"snapshot":"snap","count":1,"ready":"'$READY'","ttl_s":2}'
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
# The daemon's own CPU (utime + stime, ms) so far: per request, with a delta.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / hz }' "/proc/$PID/stat"; }
scrape > "$W/m0"
if [ "$VMM" = firecracker ]; then
  echo "== firecracker: wasp bench serve, $N requests of 1 clone, one at a time (standby ${STANDBY:-0}; load: $(cut -d' ' -f1-3 /proc/loadavg))"
  # With standbys, each request is sent once the engine holds one again
  # (it refills only while idle): --gap-ms spaces the requests.
  "$WASP" bench serve --server unix:"$S" --snapshot snap --requests "$N" --ready running --ttl-s 2 ${GAP_MS:+--gap-ms "$GAP_MS"}
  scrape > "$W/m1"
  echo "-- the daemon's means over these requests"
  means "$W/m0" "$W/m1"
  exit 0
fi
if [ "${ONLY:-}" != soak ]; then
echo "== $N requests of 1 clone, one at a time"
oha --no-tui -n "$N" -c 1 --unix-socket "$S" -m POST -H "$H" -d "$BODY" http://wasp/v1/clones
scrape > "$W/m1"
echo "-- the daemon's means over these requests"
means "$W/m0" "$W/m1"
echo "== 100 concurrent requests of 1 clone each (load: $(cut -d' ' -f1-3 /proc/loadavg))"
C0=$(cpu_ms)
if [ -n "${PERF:-}" ]; then
  perf record -F 2000 -g -p "$PID" -o "$PERF" 2>/dev/null &
  PERFPID=$!
  sleep 0.5 # perf attaching; a benchmark script, not a test
fi
oha --no-tui -n 100 -c 100 --unix-socket "$S" -m POST -H "$H" -d "$BODY" http://wasp/v1/clones
[ -n "${PERF:-}" ] && kill -INT "$PERFPID" && wait "$PERFPID" || true
echo "-- the daemon's own CPU over these 100 requests: $(awk -v a="$C0" -v b="$(cpu_ms)" 'BEGIN { printf "%.0f ms (%.2f ms per request)", b - a, (b - a) / 100 }')"
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
fi
if [ -n "${SOAK:-}" ]; then
  echo "== wasp bench serve: a ${SOAK} s soak, ${SOAK_C:-2} clients, ttl_s 1 (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  "$WASP" bench serve --server unix:"$S" --snapshot snap --duration "$SOAK" --concurrency "${SOAK_C:-2}" \
    --ready tcp:22 --ttl-s 1 --window 10 ${PLOT:+--plot "$PLOT"} ${PLOT_TIME:+--plot-time "$PLOT_TIME"} \
    --daemon-pid "$PID" --netns-prefix "wasp-$POOL-" --conntrack-netns "$HOST" --state-dir "$W/state"
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "daemon: $(ls /proc/$PID/fd | wc -l) fds, $(awk '/VmRSS/ {print $2 " KiB RSS"}' /proc/$PID/status); slot netns: $(ip netns list | grep -c "wasp-$POOL-")"
fi
grep -c 'status=201' "$W/daemon.log" | sed 's/^/requests answered 201: /'
