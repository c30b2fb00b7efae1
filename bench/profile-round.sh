#!/usr/bin/env bash
# Where a round's time goes: runs one `--bench-rounds` row, waits until every
# worker has joined, then samples the coordinator and one worker with `perf`
# for SECONDS seconds of steady-state rounds (start-up left out), and prints
# each process's samples by category (by leaf symbol and callers), its CPU
# time over the window and the coordinator's peak RSS.
#   bench/profile-round.sh WORKERS HIDDEN ROUNDS [SECONDS]
#   e.g. bench/profile-round.sh 2 200,200 3000 4
# ROUNDS must last past the sampling window. Needs perf (root, or
# kernel.perf_event_paranoid ≤ 1 for the kernel's share). Settings: BIN, DATA,
# OUT (where perf.data and the reports stay; default a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."

workers=$1 hidden=$2 rounds=$3 seconds=${4:-4}
BIN=${BIN:-target/release/lazyavg}
DATA=${DATA:-../shared/data/mnist}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
log="$OUT/coordinator.log"

LAZYAVG_CACHE_DIR="$OUT/cache" "$BIN" --log-format json coordinator --spawn-workers "$workers" --hidden "$hidden" \
    --bench-rounds "$rounds" --bind 127.0.0.1:0 --data-dir "$DATA" --out "$OUT/run" 2>"$log" &
coord=$!
trap 'kill "$coord" 2>/dev/null || true' EXIT

# Wait for the last worker to join (then the rounds start).
until grep -q "\"workers\":$workers}" "$log" 2>/dev/null; do
    kill -0 "$coord" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.05
done
worker=$(ps -o pid= --ppid "$coord" | head -1 | tr -d ' ')
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
c0=$(ticks "$coord") w0=$(ticks "$worker") t0=$(date +%s.%N)
perf record -q -F 499 --call-graph dwarf,8192 -p "$coord,$worker" -o "$OUT/perf.data" -- sleep "$seconds" 2>/dev/null
c1=$(ticks "$coord") w1=$(ticks "$worker") t1=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$coord/status")
wait "$coord"
trap - EXIT
hz=$(getconf CLK_TCK)
python3 - "$c0" "$c1" "$w0" "$w1" "$t0" "$t1" "$hz" "$hwm" "$coord" "$worker" <<'PY'
import sys
c0, c1, w0, w1, t0, t1, hz, hwm = map(float, sys.argv[1:9])
wall = t1 - t0
print(f"window {wall:.2f} s: coordinator CPU {(c1 - c0) / hz / wall:.2f} cores, "
      f"worker {sys.argv[10]} CPU {(w1 - w0) / hz / wall:.2f} cores; coordinator (pid {sys.argv[9]}) VmHWM so far {hwm:.1f} MB")
PY
grep '"round benchmark"' "$log" | cut -c1-400

# Each sample of a process in one category, by its leaf symbol and callers.
cat >"$OUT/classify.py" <<'PY'
import re, sys, collections
# perf script (comm pid/tid, then leaf-first frames) -> each sample of PID in
# one bucket, by its leaf and its callers.
pid = sys.argv[1]
def m(p, s): return re.search(p, s) is not None
def caller(frames, pat):
    for f in frames[1:]:
        if m(pat, f): return f
    return ""
OURS = r"lazyavg|tonic|\bh2::|hyper|prost"
def bucket(fr):
    leaf = fr[0]
    anyf = lambda p: any(m(p, f) for f in fr)
    if anyf(r"exc_page_fault|do_user_addr_fault|handle_mm_fault|__munmap|munmap|madvise|zap_|unmap_page|do_anonymous"):
        c = caller(fr, OURS)
        who = ("Round::with (start copy)" if "Round::with" in c else "encode_values" if "encode_values" in c
               else "tonic decode buffers" if "tonic::codec::decode" in c else "Round::finish (frees)" if "Round::finish" in c
               else "snapshot_to_send" if "snapshot_to_send" in c else "other")
        return f"allocation: page faults / unmapping ({who})"
    if m(r"malloc|^free|cfree|realloc|_int_|arena|sysmalloc|tcache", leaf) or anyf(r"^(__libc_)?(malloc|free|realloc|calloc)$|_int_malloc|_int_free"):
        return "allocation: malloc/free"
    if m(r"memset|Vec<T,A>::resize", leaf):
        return "allocation: zeroing (memset, Vec::resize)"
    if m(r"memmove|memcpy", leaf):
        c = caller(fr, OURS)
        for pat, name in [
            (r"poll_frame", "pull: tonic copies frames into its decode buffer"),
            (r"decode_chunk", "pull: tonic regrows its decode buffer (BytesMut::reserve copy)"),
            (r"prost::encoding::bytes::encode|BytesAdapter.*append_to", "push: prost copies each chunk into tonic's encode buffer"),
            (r"encode_values", "encode: f32 -> little-endian bytes (encode_values)"),
            (r"Round::accept", "decode: decode_into copy into scratch"),
            (r"Round::with", "Round::with: copy of the start weights (start.to_vec)"),
            (r"exchange|OuterOptimizer|WeightedMean::write_out", "average: outer step (params <- average copy)"),
            (r"Link::send", "lane: a chunk copied into its slot (Link::send)"),
            (r"Board::post", "board: the average copied onto the board once (Board::post)"),
            (r"snapshot_to_send", "worker: snapshot_to_send (copy of the weights to send)"),
            (r"session::run|Session::average", "worker: applying the received average (copy)"),
        ]:
            if m(pat, c): return "copy: " + name
        return "copy: other memmove"
    if anyf(r"std::io::Read>::read$|tcp_recvmsg|sock_recvmsg|ksys_read|__x64_sys_read|__x64_sys_recvfrom"):
        return "transport: socket read (kernel copy, TCP)"
    if anyf(r"write_vectored|tcp_sendmsg|ksys_write|do_writev|__x64_sys_writev|__x64_sys_write|__x64_sys_sendmsg"):
        return "transport: socket write (kernel copy, TCP, loopback delivery)"
    if m(r"Round::accept|copy_measuring", leaf): return "update norm: the chunk copied and measured (screen::copy_measuring)"
    if m(r"first_non_finite|ChunkCursor|decode_into|decode_values", leaf): return "decode: first_non_finite check"
    if m(r"WeightedMean|aggregate", leaf): return "average: WeightedMean add/finish"
    if m(r"OuterOptimizer", leaf): return "average: outer step"
    if m(r"encode_values|weight_chunks", leaf): return "encode: encode_values"
    if anyf(r"futex|epoll_wait|ep_poll|schedule|finish_task_switch|Condvar|park") or m(r"_raw_spin_unlock_irq|irqentry_exit|try_to_wake|wake_up", leaf):
        return "waiting: scheduling, wake-ups, futex/epoll"
    if m(r"\bh2::|hyper|tonic|prost|http_body|bytes::|hpack", leaf): return "HTTP/2 + gRPC framing (h2, hyper, tonic, prost, bytes)"
    if m(r"tokio|mio", leaf): return "tokio runtime"
    if m(r"softirq|net_rx|tcp_|ip_|skb|sock|nf_|dev_|loopback|napi", leaf): return "transport: TCP/IP (softirq)"
    if m(r"gemm|idx::", leaf): return "evaluation / start-up (gemm, idx)"
    return "other"
counts, total = collections.Counter(), 0
def flush(head, frames):
    global total
    if head is None or not frames: return
    if head.split()[1].split('/')[0] != pid: return
    total += 1
    counts[bucket(frames)] += 1
head, frames = None, []
for line in sys.stdin:
    if not line.strip():
        flush(head, frames); head, frames = None, []
    elif not line.startswith(("\t", " ")):
        flush(head, frames); head, frames = line, []
    else:
        parts = line.strip().split(" ", 1)
        sym = parts[1] if len(parts) > 1 else parts[0]
        frames.append(re.sub(r"\s*\(.*\)$", "", sym))
flush(head, frames)
print(f"{total} samples")
for k, c in sorted(counts.items(), key=lambda kv: (kv[0].split(':')[0], -kv[1])):
    print(f"| {k} | {100*c/total:.1f}% |")
groups = collections.Counter()
for k, c in counts.items():
    g = k.split(":")[0] if not k.startswith("copy") else "copy (user space)"
    groups[g] += c
print("by group: " + "; ".join(f"{g} {100*c/total:.1f}%" for g, c in groups.most_common()))
PY

for who in coordinator:$coord worker:$worker; do
    name=${who%%:*} pid=${who#*:}
    perf script -i "$OUT/perf.data" --pid "$pid" -F comm,pid,tid,ip,sym --no-inline 2>/dev/null >"$OUT/$name.script.txt"
    # Leaf (self) symbol of every sample of the process, all its threads.
    awk -v pid="$pid" 'NF && $0 !~ /^[ \t]/ {split($2, p, "/"); take = (p[1] == pid); leaf = 1; next}
        take && leaf && NF {sub(/^[ \t]*[0-9a-f]+ /, ""); sub(/ \(.*\)$/, ""); n[$0]++; total++; leaf = 0}
        END {for (s in n) printf "%6.2f%%  %s\n", 100 * n[s] / total, s}' "$OUT/$name.script.txt" |
        sort -rn >"$OUT/$name.symbols.txt"
    echo "== $name (pid $pid): share of its samples, by leaf symbol and callers"
    python3 "$OUT/classify.py" "$pid" <"$OUT/$name.script.txt"
    echo "   top symbols (self):"
    head -10 "$OUT/$name.symbols.txt" | sed 's/^/   /' | cut -c1-150
done
echo "(perf data and reports in $OUT)"
