#!/usr/bin/env bash
# Merging separately trained networks (docs/merging.md). For every seed:
#   separate: two nets from different inits, each on its own half of MNIST;
#   shared:   the same init (one --seed), different halves;
#   quarters: four nets from different inits, each on its own quarter;
#   full:     one net on all 60,000 images, the reference.
# Each group is merged with --match weights and --match activations, each
# also with --repair; the tables' rows (inputs, naive average, merged, merged
# + REPAIR, ensemble) are reduced to
# medians over the seeds. Writes OUT/merge.md (also printed) and OUT/runs.jsonl.
#   cargo build --release && bench/merge.sh
# Settings: BIN, DATA, OUT, SEEDS ("1 2 3"), EPOCHS (5), MODEL (the MLP of
# HIDDEN, 200,200; or a preset or stack: lenet5), METHODS ("weights
# activations"; a CNN takes "weights"), and extra `lazyavg merge` flags as
# arguments (e.g. --reference first).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/lazyavg}
DATA=${DATA:-../shared/data/mnist}
OUT=${OUT:-runs/merge-$(date -u +%Y%m%dT%H%M%SZ)}
SEEDS=${SEEDS:-1 2 3}
EPOCHS=${EPOCHS:-5}
HIDDEN=${HIDDEN:-200,200}
MODEL=${MODEL:-mlp}
METHODS=${METHODS:-weights activations}
ARCH=(--hidden "$HIDDEN")
[[ "$MODEL" != mlp ]] && ARCH=(--model "$MODEL")
mkdir -p "$OUT"
: >"$OUT/runs.jsonl"

# train NAME SEED [--part K/N]: trains unless the model exists.
train() {
    local name=$1 seed=$2
    shift 2
    [[ -f "$OUT/$name.safetensors" ]] && return
    "$BIN" --log-format json train --data-dir "$DATA" "${ARCH[@]}" --epochs "$EPOCHS" --seed "$seed" \
        --save "$OUT/$name.safetensors" "$@" 2>"$OUT/$name.log"
}

# merge SCENARIO SEED METHOD MODEL...: merges and appends the table as JSON lines.
merge() {
    local scenario=$1 seed=$2 method=$3
    shift 3
    local name="$scenario-s$seed-$method"
    "$BIN" --log-format json merge "$@" --match "$method" --data-dir "$DATA" --seed "$seed" \
        --repair --out "$OUT/$name.safetensors" "${EXTRA[@]}" >"$OUT/$name.md" 2>"$OUT/$name.log"
    python3 - "$scenario" "$seed" "$method" "$OUT/$name.md" "$OUT/$name.log" >>"$OUT/runs.jsonl" <<'PY'
import json, sys
scenario, seed, method, table, log = sys.argv[1:]
seconds = next(json.loads(l)["seconds"] for l in open(log) if '"aligned"' in l)
for line in open(table).read().splitlines()[2:]:
    model, accuracy, loss = [c.strip() for c in line.strip("|").split("|")]
    print(json.dumps({"scenario": scenario, "seed": int(seed), "method": method, "model": model,
                      "accuracy": float(accuracy.rstrip("%")), "loss": float(loss), "match_seconds": seconds}))
PY
}

EXTRA=("$@")
for s in $SEEDS; do
    a=$((10 * s + 1)) b=$((10 * s + 2))
    train "full-s$s" "$a"
    train "half1-s$s" "$a" --part 1/2 --split-seed "$s"
    train "half2-s$s" "$b" --part 2/2 --split-seed "$s"
    train "half2-shared-s$s" "$a" --part 2/2 --split-seed "$s"
    for k in 1 2 3 4; do
        train "quarter$k-s$s" $((10 * s + k)) --part "$k/4" --split-seed "$s"
    done
    for method in $METHODS; do
        merge separate "$s" "$method" "$OUT/half1-s$s.safetensors" "$OUT/half2-s$s.safetensors"
        merge shared "$s" "$method" "$OUT/half1-s$s.safetensors" "$OUT/half2-shared-s$s.safetensors"
        merge quarters "$s" "$method" "$OUT"/quarter{1,2,3,4}-s$s.safetensors
    done
    # The reference row: one net on everything, scored by a merge table of its own.
    python3 - "$OUT/full-s$s.log" "$s" >>"$OUT/runs.jsonl" <<'PY'
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if '"epoch done"' in l][-1]
for scenario in ["separate", "shared", "quarters"]:
    print(json.dumps({"scenario": scenario, "seed": int(sys.argv[2]), "method": "-", "model": "one net on all 60,000",
                      "accuracy": round(100 * last["accuracy"], 2), "loss": round(last["test_loss"], 4)}))
PY
done

python3 - "$OUT/runs.jsonl" "$SEEDS" "$EPOCHS" "$HIDDEN" "$MODEL" "$METHODS" >"$OUT/merge.md" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
seeds, epochs, hidden, model, methods = sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6].split()
med = statistics.median
def row(label, records):
    acc = [r["accuracy"] for r in records]
    loss = [r["loss"] for r in records]
    return f"| {label} | {med(acc):.2f}% | {min(acc):.2f}–{max(acc):.2f} | {med(loss):.4f} |"
name = f"784-{hidden.replace(',', '-')}-10" if model == "mlp" else model
print(f"{name}, {epochs} epochs per net, medians over seeds {', '.join(seeds)}.\n")
for scenario, title in [("separate", "Two nets, different inits, one half each"),
                        ("shared", "Two nets, one shared init, one half each"),
                        ("quarters", "Four nets, different inits, one quarter each")]:
    rs = [r for r in runs if r["scenario"] == scenario]
    print(f"### {title}\n\n| model | test accuracy | range | test loss |\n| --- | ---: | --- | ---: |")
    weights = [r for r in rs if r["method"] == "weights"]
    inputs = sorted({r["model"] for r in weights if r["model"].endswith(".safetensors")})
    by_input = {}
    for r in weights:
        if r["model"].endswith(".safetensors"):
            by_input.setdefault(r["seed"], []).append(r)
    n = len(inputs) // len(seeds)
    for i in range(n):
        print(row(f"input {i + 1}", [by_input[s][i] for s in by_input]))
    print(row("worse input", [min(v, key=lambda r: r["accuracy"]) for v in by_input.values()]))
    print(row("one net on all 60,000", [r for r in rs if r["method"] == "-"]))
    print(row("naive average", [r for r in weights if r["model"] == "naive average"]))
    for method in methods:
        merged = [r for r in rs if r["method"] == method and r["model"].startswith("merged")]
        print(row(f"{method}-matched", [r for r in merged if not r["model"].endswith("REPAIR")]))
        print(row(f"{method}-matched + REPAIR", [r for r in merged if r["model"].endswith("REPAIR")]))
    print(row("ensemble (mean of softmax)", [r for r in weights if r["model"] == "ensemble of the inputs"]))
    times = ", ".join(f"{m} {1e3 * med([r['match_seconds'] for r in rs if r['method'] == m]):.0f} ms" for m in methods)
    print(f"\nMatching time (median): {times}.\n")
PY
cat "$OUT/merge.md"
