#!/usr/bin/env bash
# The cost of --metrics-bind: bench/train.sh without and with it, alternating,
# RUNS (3) times each; with it, /metrics is scraped every second (15 times as
# often as deploy/monitoring/prometheus.yml does). Prints each run's first
# line (accuracy, epochs, wall time) and the medians.
#   cargo build --release && bench/metrics-cost.sh
# Settings: RUNS, and train.sh's (BIN, DATA, WORKERS, extra coordinator flags).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
seconds() { sed -n 's/.* in \([0-9.]*\) s$/\1/p'; }
# The whole output is read (train.sh's report must not meet a closed pipe).
first_line() {
    local out
    out=$("$@")
    echo "${out%%$'\n'*}"
}
without=() with=()
for i in $(seq "$RUNS"); do
    line=$(first_line bench/train.sh "$@")
    echo "run $i without: $line"
    without+=("$(seconds <<<"$line")")
    port=$(free_port)
    (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics" || true; done) &
    scraper=$!
    line=$(first_line bench/train.sh --metrics-bind "127.0.0.1:$port" --metrics-linger 0s "$@")
    kill "$scraper"
    echo "run $i with:    $line"
    with+=("$(seconds <<<"$line")")
done
python3 - "${without[*]}" "${with[*]}" <<'PY'
import statistics, sys
without, with_ = ([float(x) for x in arg.split()] for arg in sys.argv[1:])
a, b = statistics.median(without), statistics.median(with_)
print(f"median wall time: {a:.2f} s without, {b:.2f} s with --metrics-bind ({(b / a - 1) * 100:+.1f}%)")
PY
