#!/usr/bin/env bash
# The figures the project's 2-core machine cannot show, for a machine with a
# core per process (5 or more): single-thread throughput against the ceiling
# (AVX-512 kernels where the CPU has them), the idle share of 2 workers
# without and with --overlap (3 runs each, alternating), and time to 98% with
# 1, 2 and 4 workers. Everything it prints is also written under OUT.
#   cargo build --release --workspace && bench/many-cores.sh
# Settings: BIN, BENCH (lazyavg-bench beside BIN), DATA, OUT (a new
# temporary directory), SEEDS (1,2,3).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/lazyavg}
BENCH=${BENCH:-$(dirname "$BIN")/lazyavg-bench}
DATA=${DATA:-../shared/data/mnist}
OUT=${OUT:-$(mktemp -d)}
SEEDS=${SEEDS:-1,2,3}
mkdir -p "$OUT"
echo "cores: $(nproc); writing to $OUT"

"$BIN" bench train --data-dir "$DATA" 2>/dev/null | tee "$OUT/train.md"
for run in 1 2 3; do
    for mode in plain overlap; do
        flags=()
        [[ $mode == overlap ]] && flags=(--overlap)
        echo "== run $run, $mode"
        BIN="$BIN" DATA="$DATA" bench/train.sh "${flags[@]}"
    done
done | tee "$OUT/idle.txt"
"$BENCH" scaling --lazyavg "$BIN" --data-dir "$DATA" --workers 1,2,4 --seeds "$SEEDS" --out "$OUT/scaling" 2>/dev/null
