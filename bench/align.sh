#!/usr/bin/env bash
# --align in the cluster: models trained apart (--init independent) and synced
# rarely (--sync-every epoch, and every 128 minibatches), averaged with no
# matching, weight matching or activation matching; plus shared init with
# frequent syncs, where matching should find the identity and change nothing.
# Every run is `lazyavg-bench scaling` (same runs, same table); this script then
# prints the median test accuracy after each epoch, and the matching cost.
#   cargo build --release --workspace && bench/align.sh
# Settings: BIN, BENCH (lazyavg-bench beside BIN), DATA, SEEDS (1,2,3), WORKERS (2,4), EPOCHS (5), OUT (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/lazyavg}
BENCH=${BENCH:-$(dirname "$BIN")/lazyavg-bench}
DATA=${DATA:-../shared/data/mnist}
SEEDS=${SEEDS:-1,2,3}
WORKERS=${WORKERS:-2,4}
EPOCHS=${EPOCHS:-5}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
# The coordinator's debug line "contributions aligned" carries the cost per round.
export RUST_LOG=info,lazyavg_coordinator=debug

# One sweep: $1 a name, then coordinator flags.
sweep() {
    local name=$1
    shift
    "$BENCH" scaling --lazyavg "$BIN" --workers "$WORKERS" --seeds "$SEEDS" --data-dir "$DATA" --out "$OUT/$name" \
        -- --epochs "$EPOCHS" "$@" >"$OUT/$name.txt"
}

for sync in epoch 128; do
    for align in none weights activations; do
        sweep "independent-$sync-$align" --init independent --sync-every "$sync" --align "$align"
    done
done
for align in none weights; do
    sweep "shared-16-$align" --init shared --sync-every 16 --align "$align"
done

python3 - "$OUT" "$EPOCHS" "$SEEDS" <<'PY'
import json, pathlib, statistics, sys

out, epochs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
print(f"| init | sync every | N | align | " + " | ".join(f"acc. epoch {e}" for e in range(1, epochs + 1))
      + " | matching ms/round | rounds with units moved |")
print("|---|---|--:|---|" + "--:|" * epochs + "--:|--:|")
for sweep in sorted(p for p in out.iterdir() if p.is_dir()):
    init, sync, align = sweep.name.split("-")
    by_n = {}
    for run in sorted((sweep / "runs").iterdir()):
        n = int(run.name[1:].split("-")[0])
        acc = [json.loads(l)["accuracy"] for l in open(run / "metrics.jsonl") if '"kind":"epoch"' in l]
        aligned = [json.loads(l) for l in open(run / "coordinator.log") if '"contributions aligned"' in l]
        by_n.setdefault(n, []).append((acc, aligned))
    for n, runs in sorted(by_n.items()):
        cells = [f"{statistics.median(r[0][e] for r in runs):.4f}" for e in range(epochs)]
        lines = [l for r in runs for l in r[1]]
        cost = f"{statistics.median(l['align_ms'] for l in lines):.1f}" if lines else "—"
        moved = f"{sum(l['realigned'] > 0 for l in lines)}/{len(lines)}" if lines else "—"
        print(f"| {init} | {sync} | {n} | {align} | " + " | ".join(cells) + f" | {cost} | {moved} |")
print(f"\nMedian over seeds {sys.argv[3]} of the test accuracy after each epoch; the last column counts rounds "
      "(all seeds) in which matching reordered some contribution's units. Per-sweep `lazyavg-bench scaling` tables: "
      f"{out}/*.txt")
PY
