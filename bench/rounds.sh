#!/usr/bin/env bash
# Round-cost benchmark: the median wall time of one averaging round (pull +
# average + push, measured at the coordinator, with workers that train nothing)
# on loopback, the weights moved per second, and the coordinator's peak RSS.
#   cargo build --release && bench/rounds.sh
# Rows: 2, 8 and 20 workers of the default MLP (199,210 parameters), and the
# 20M-parameter model (--hidden 5000,3216) at 2 and 8 workers with ROUNDS/10
# rounds (at least 20).
# Settings: BIN, DATA, ROUNDS (300), FLAGS (more coordinator flags, e.g.
# "--aggregate centered-clip").
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/lazyavg}
DATA=${DATA:-../shared/data/mnist}
ROUNDS=${ROUNDS:-300}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One row: $1 workers, $2 hidden widths, $3 rounds.
row() {
    LAZYAVG_CACHE_DIR="$work/cache" "$BIN" --log-format json coordinator --spawn-workers "$1" --hidden "$2" \
        --bench-rounds "$3" ${FLAGS:-} --bind 127.0.0.1:0 --data-dir "$DATA" --out "$work/out-$1-$2" 2>"$work/log" || {
        cat "$work/log" >&2
        exit 1
    }
    python3 - "$work/log" "$1" "$2" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("message") == "round benchmark":
        print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['parameters']:,} | {r['median_ms']:.2f} | {r['mean_ms']:.2f} | "
              f"{r['weights_gb_per_s']:.2f} | {r['peak_rss_mb']:.1f} |")
PY
}

echo "| workers | hidden | parameters | median ms | mean ms | GB/s of weights moved | coordinator peak RSS MB |"
echo "|---:|---|---:|---:|---:|---:|---:|"
row 2 200,200 "$ROUNDS"
row 8 200,200 "$ROUNDS"
row 20 200,200 "$ROUNDS"
big=$((ROUNDS / 10 > 20 ? ROUNDS / 10 : 20))
row 2 5000,3216 "$big"
row 8 5000,3216 "$big"
