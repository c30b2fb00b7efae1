#!/usr/bin/env bash
# Straggler benchmark: three workers train with round deadlines
# (--round-timeout and --straggler-factor), once all at full speed and once
# with one of them 5× slower (the worker's test-only --debug-slowdown flag).
# Prints wall time and final accuracy of both runs.
#   cargo build --release && bench/straggler.sh
# Settings: BIN, DATA, EPOCHS (5), TIMEOUT (10s), FACTOR (3), SLOWDOWN (5).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BIN=${BIN:-target/release/lazyavg}
DATA=${DATA:-../shared/data/mnist}
EPOCHS=${EPOCHS:-5}
TIMEOUT=${TIMEOUT:-10s}
FACTOR=${FACTOR:-3}
SLOWDOWN=${SLOWDOWN:-5}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

# Prints "seconds accuracy" of one run; $1 names it, $2 is the third worker's slowdown.
run() {
    local dir="$work/$1" addr
    mkdir -p "$dir"
    "$BIN" --log-format json coordinator --workers 3 --epochs "$EPOCHS" --seed 1 --round-timeout "$TIMEOUT" \
        --straggler-factor "$FACTOR" \
        --bind 127.0.0.1:0 --data-dir "$DATA" --out "$dir/out" 2>"$dir/coordinator.log" &
    local coordinator=$!
    pids+=("$coordinator")
    addr=$(listening_addr "$dir/coordinator.log" "$coordinator")
    for i in 1 2 3; do
        local slow=1
        [[ $i == 3 ]] && slow=$2
        LAZYAVG_CACHE_DIR="$work/cache" "$BIN" worker --coordinator "http://$addr" --name "w$i" \
            --debug-slowdown "$slow" 2>"$dir/worker-$i.log" &
        pids+=($!)
    done
    wait "$coordinator"
    python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: r = json.loads(l)
    except ValueError: continue
    if r.get("message") == "training complete": print("%.2f %.4f" % (r["seconds"], r["accuracy"]))' "$dir/coordinator.log"
}

read -r base_s base_acc < <(run fault-free 1)
read -r slow_s slow_acc < <(run straggler "$SLOWDOWN")
echo "| run (3 workers, $EPOCHS epochs, --round-timeout $TIMEOUT --straggler-factor $FACTOR) | seconds | test accuracy |"
echo "|---|---:|---:|"
echo "| all at full speed | $base_s | $base_acc |"
echo "| one worker ${SLOWDOWN}× slower | $slow_s | $slow_acc |"
python3 -c "import sys; b, s, ba, sa = map(float, sys.argv[1:]); print(f'time ratio {s / b:.2f}, accuracy difference {100 * (sa - ba):+.2f} pp')" \
    "$base_s" "$slow_s" "$base_acc" "$slow_acc"
