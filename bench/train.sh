#!/usr/bin/env bash
# The main job, measured: a coordinator and N separate worker processes on
# loopback with the default settings (K = 16 up to 8 workers). Prints the final accuracy, the
# wall time, the cluster's samples/s, and each worker's idle share (time not
# spent training: waiting for others plus transfers) as the worker reports it,
# and each worker's peak RSS (GNU time).
#   cargo build --release && bench/train.sh
# Settings: BIN, DATA, WORKERS (2), TARGET (0.98, the accuracy whose first
# epoch is reported), and any extra coordinator flags as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BIN=${BIN:-target/release/lazyavg}
DATA=${DATA:-../shared/data/mnist}
WORKERS=${WORKERS:-2}
TARGET=${TARGET:-0.98}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

"$BIN" --log-format json coordinator --workers "$WORKERS" --bind 127.0.0.1:0 --data-dir "$DATA" --out "$work/out" \
    "$@" 2>"$work/coordinator.log" &
coordinator=$!
pids+=("$coordinator")
addr=$(listening_addr "$work/coordinator.log" "$coordinator")
for i in $(seq "$WORKERS"); do
    LAZYAVG_CACHE_DIR="$work/cache" /usr/bin/time -f %M -o "$work/worker-$i.rss" "$BIN" --log-format json worker --coordinator "http://$addr" --name "w$i" \
        2>"$work/worker-$i.log" &
    pids+=($!)
done
wait "$coordinator"
wait
python3 - "$work" "$WORKERS" "$TARGET" <<'PY'
import json, statistics, sys
work, workers, target = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def lines(path):
    for line in open(path):
        try:
            yield json.loads(line)
        except ValueError:
            pass
epochs = [r for r in lines(f"{work}/coordinator.log") if r.get("message") == "epoch done"]
done = next(r for r in lines(f"{work}/coordinator.log") if r.get("message") == "training complete")
idle = [r["idle_share"] for i in range(1, workers + 1) for r in lines(f"{work}/worker-{i}.log")
        if r.get("message") == "stopped by the coordinator"]
print(f"workers {workers}: final accuracy {done['accuracy']:.4f} after {done['epochs']} epochs in {done['seconds']:.2f} s")
print("  accuracy by epoch: " + ", ".join(f"{100 * r['accuracy']:.2f}%" for r in epochs))
from datetime import datetime
def at(record):
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
start = at(next(lines(f"{work}/coordinator.log")))
first = next((r for r in epochs if r["accuracy"] >= target), None)
print(f"  first epoch at >= {100 * target:.1f}%: "
      + (f"{first['epoch']} ({(at(first) - start).total_seconds():.0f} s)" if first else "none"))
print(f"  cluster samples/s (median over epochs): {statistics.median(r['samples_per_s'] for r in epochs):,.0f}")
print(f"  sync share of wall time (median over epochs): {statistics.median(r['sync_share'] for r in epochs):.3f}")
print(f"  worker idle share: {', '.join(f'{x:.3f}' for x in idle)}")
rss = [int(open(f"{work}/worker-{i}.rss").read().split()[-1]) / 1024 for i in range(1, workers + 1)]
print(f"  worker peak RSS: {', '.join(f'{x:.0f} MB' for x in rss)}")
PY
