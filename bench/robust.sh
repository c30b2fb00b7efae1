#!/usr/bin/env bash
# Robust aggregation under attack: real processes on loopback, a coordinator
# with --workers N of which H are `lazyavg-bench hostile` clients, the rest
# real workers. Prints one line per run: the final test accuracy, or how the
# run ended; then the median over seeds of each configuration.
#   cargo build --release -p lazyavg -p lazyavg-bench && bench/robust.sh
# Settings: BIN, BENCH, DATA, EPOCHS (10), SEEDS (1 2 3), and CASES, lines of
# "RULE N H ATTACK[:FACTOR] [coordinator flags]" (H = 0: the fault-free run;
# FACTOR is the client's --factor, e.g. signflip:5).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BIN=${BIN:-target/release/lazyavg}
BENCH=${BENCH:-target/release/lazyavg-bench}
DATA=${DATA:-../shared/data/mnist}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-1 2 3}
CASES=${CASES:-"mean 5 0 -
centered-clip 5 0 -
centered-clip 5 1 scale
median 5 0 -
median 5 1 scale
trimmed-mean 5 0 -
trimmed-mean 5 1 scale
mean 5 1 scale --drop-outliers
mean 5 1 scale
mean 4 0 -
centered-clip 4 0 -
centered-clip 4 1 scale
median 4 0 -
median 4 1 scale
trimmed-mean 4 0 -
trimmed-mean 4 1 scale
centered-clip 5 1 noise
median 5 1 noise
trimmed-mean 5 1 noise
centered-clip 5 1 signflip
median 5 1 signflip
trimmed-mean 5 1 signflip
mean 7 0 -
centered-clip 7 0 -
centered-clip 7 2 scale
median 7 0 -
median 7 2 scale
trimmed-mean 7 0 -
trimmed-mean 7 2 scale
mean 5 1 noise
mean 2 0 -
centered-clip 2 0 -
median 2 0 -
trimmed-mean 2 0 -
mean 8 0 -
centered-clip 8 0 -
median 8 0 -
trimmed-mean 8 0 -"}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

# Prints the final accuracy of one run, or "ended: <last error>"; $1 rule,
# $2 workers, $3 hostile ones, $4 attack, $5 seed, then coordinator flags.
run() {
    local rule=$1 n=$2 h=$3 attack=$4 seed=$5 dir addr
    shift 5
    dir=$(mktemp -d "$work/run-XXXX")
    "$BIN" --log-format json coordinator --workers "$n" --epochs "$EPOCHS" --seed "$seed" --aggregate "$rule" \
        --bind 127.0.0.1:0 --data-dir "$DATA" --out "$dir/out" "$@" 2>"$dir/coordinator.log" &
    local coordinator=$!
    pids+=("$coordinator")
    addr=$(listening_addr "$dir/coordinator.log" "$coordinator")
    for i in $(seq "$((n - h))"); do
        LAZYAVG_CACHE_DIR="$work/cache" "$BIN" worker --coordinator "http://$addr" --name "w$i" \
            2>"$dir/worker-$i.log" &
        pids+=($!)
    done
    local size=()
    [[ $attack == *:* ]] && size=(--factor "${attack#*:}")
    for i in $(seq "$h"); do
        "$BENCH" hostile --coordinator "http://$addr" --attack "${attack%%:*}" "${size[@]}" --name "hostile-$i" \
            --seed "$i" 2>"$dir/hostile-$i.log" &
        pids+=($!)
    done
    wait "$coordinator" || true
    python3 -c 'import json, re, sys
error = "?"
for l in open(sys.argv[1]):
    try: r = json.loads(l)
    except ValueError:
        error = l.strip()[len("lazyavg: "):]
        continue
    if r.get("message") == "training complete":
        print("%.4f" % r["accuracy"]); sys.exit()
named = re.search(r"after worker (\S+) sent", error)
print("ended: " + error.split(":")[0] + (" (names %s)" % named.group(1) if named else ""))' "$dir/coordinator.log"
}

echo "| rule | workers | hostile | attack | flags | accuracy by seed ($EPOCHS epochs) | median |"
echo "|---|---:|---:|---|---|---|---:|"
while read -r rule n h attack flags; do
    [[ -z "$rule" ]] && continue
    results=()
    for seed in $SEEDS; do
        # shellcheck disable=SC2086 # flags split on purpose
        results+=("$(run "$rule" "$n" "$h" "$attack" "$seed" $flags)")
    done
    median=$(printf '%s\n' "${results[@]}" | python3 -c 'import sys, statistics
v = [float(l) for l in sys.stdin if l[0].isdigit()]
print("%.2f%%" % (100 * statistics.median(v)) if v else "-")')
    echo "| $rule | $n | $h | $attack | ${flags:-} | $(IFS=' '; echo "${results[*]}") | $median |"
done <<<"$CASES"
