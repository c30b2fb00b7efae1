#!/usr/bin/env bash
# lazyavg against PyTorch, one thread each, side by side in one run: for every
# round and model, `lazyavg bench train --model M` and then bench/pytorch.py
# with the same net, optimiser and batch sizes, so that a slow stretch of the
# machine hits both. Prints a Markdown table of the medians over the rounds.
# The first run installs torch (about 5 GB with its CUDA wheels, which a
# CPU run does not use) into VENV.
#   cargo build --release && bench/pytorch.sh
# Settings: BIN, DATA, VENV (runs/torch-venv), TORCH (2.15.0), MODELS
# ("mlp lenet5 cnn"), BATCHES ("32 64"), ROUNDS (3), ROW_SECONDS (5, per table row).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/lazyavg}
DATA=${DATA:-../shared/data/mnist}
VENV=${VENV:-runs/torch-venv}
TORCH=${TORCH:-2.15.0}
MODELS=${MODELS:-mlp lenet5 cnn}
BATCHES=${BATCHES:-32 64}
ROUNDS=${ROUNDS:-3}
ROW_SECONDS=${ROW_SECONDS:-5}

if ! "$VENV/bin/python" -c "import torch, numpy" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "torch==$TORCH" numpy
fi

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
for round in $(seq "$ROUNDS"); do
    for model in $MODELS; do
        echo "round $round/$ROUNDS: $model" >&2
        # `| lenet5, batch 32 | 1,234 | ...` rows become JSON lines like pytorch.py's.
        "$BIN" bench train --data-dir "$DATA" --model "$model" --seconds "$ROW_SECONDS" 2>/dev/null |
            sed -n "s/^| [^|,]*, batch \([0-9]*\) | \([0-9,]*\) |.*/{\"lazyavg\": true, \"model\": \"$model\", \"batch\": \1, \"samples_per_s\": \"\2\"}/p" >>"$rows"
        # shellcheck disable=SC2086 # BATCHES is a list
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$VENV/bin/python" bench/pytorch.py "$DATA" "$model" "$ROW_SECONDS" $BATCHES >>"$rows"
    done
done

python3 - "$rows" "$BATCHES" "$ROUNDS" <<'PY'
import json, statistics, subprocess, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
batches = [int(b) for b in sys.argv[2].split()]
def rate(row):
    return float(str(row["samples_per_s"]).replace(",", ""))
cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if l.startswith("Model name")), "unknown CPU")
torch = next(r["torch"] for r in rows if "torch" in r)
print(f"One thread each on {cpu}; PyTorch {torch}; medians over {sys.argv[3]} alternating rounds:\n")
print("| model | batch | lazyavg samples/s | PyTorch samples/s | lazyavg / PyTorch |")
print("|---|---:|---:|---:|---:|")
for model in dict.fromkeys(r["model"] for r in rows):
    for batch in batches:
        ours = statistics.median(rate(r) for r in rows if r["model"] == model and r["batch"] == batch and "lazyavg" in r)
        theirs = statistics.median(rate(r) for r in rows if r["model"] == model and r["batch"] == batch and "torch" in r)
        print(f"| {model} | {batch} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}× |")
PY
