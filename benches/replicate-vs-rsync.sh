#!/usr/bin/env bash
# Replication between two stores against rsync of the same store directories, and what a
# cut costs against restic copy.
#
#   benches/replicate-vs-rsync.sh [SIZE_MIB] [CHANGED_PERCENT]     (defaults: 1024, 10)
#
# Setup: a SIZE_MIB random image is backed up (1 MiB chunks) into store SRC; both
# destinations get the full store first (our receiver by `replicate`, rsync's copy by
# `rsync -a`); then CHANGED_PERCENT of the image's 1 MiB blocks are rewritten and backed
# up again, so SRC has a second version whose new chunks are about CHANGED_PERCENT of it.
#
# Fairness: both tools run over loopback TCP against a long-running daemon on the same
# disk — ours `rehydrate-backup receive`, rsync's `rsync --daemon` with a module on the
# destination directory (no ssh, no compression: the chunks are random, as most of a
# real image is after its own compression). rsync's copy is synced with `sync -f` after
# each run, once also with rsync's own `--fsync`, since a receiver makes each chunk
# durable before it counts it. Bytes on the wire are counted in both directions by the
# same counting relay in front of each daemon; times are of runs without the relay.
#
# 1. initial:      the whole store to an empty destination.
# 2. incremental:  the second version (ours: manifest + missing chunks; rsync: file list +
#                  the new chunk and index files).
# 3. resumed:      a third version sent through the relay, which cuts the connection after
#                  half of its missing bytes; then the same command again. Reported: bytes
#                  sent in total, against the bytes that were missing. The same for
#                  `restic copy` between two restic repositories holding the same images
#                  (killed half-way through, then run again; bytes counted as the packs
#                  it wrote).
set -euo pipefail

SIZE_MIB=${1:-1024}
CHANGED=${2:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/var/tmp}/rehydrate-repl-bench.XXXXXX")}
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in rsync restic python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y rsync restic python3" >&2; exit 1; }
done

cargo build --release -q -p rehydrate-backup --bin rehydrate-backup
BIN=$CARGO_TARGET_DIR/release/rehydrate-backup

# bash's own clock: a `date` process on each side would add its start-up to every figure.
now() { echo "$EPOCHREALTIME"; }
secs() { echo "$2 - $1" | bc -l; }
mib() { echo "scale=1; $1 / 1048576" | bc -l; }
ratio() { echo "scale=3; $1 / $2" | bc -l; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on port $1" >&2
    exit 1
}
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" | tail -1; }

# A counting TCP relay: LISTEN -> TARGET, counting bytes each way into FILE when a
# connection ends ("up down" per line); cuts a connection after CUT upstream bytes (0:
# never). Python, so that both tools are measured by the same code.
cat >"$WORK/relay.py" <<'EOF'
import socket, sys, threading
listen, target, out, cut = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen)); srv.listen(16)
def pipe(a, b, counter, limit):
    try:
        while True:
            want = 1 << 20 if limit == 0 else min(1 << 20, limit - counter[0])
            if want <= 0: break
            data = a.recv(want)
            if not data: break
            b.sendall(data); counter[0] += len(data)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(c):
    s = socket.create_connection(("127.0.0.1", target))
    up, down = [0], [0]
    t = threading.Thread(target=pipe, args=(s, c, down, 0)); t.start()
    pipe(c, s, up, cut); t.join()
    with open(out, "a") as f: f.write(f"{up[0]} {down[0]}\n")
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
relay() { python3 "$WORK/relay.py" "$@" & PIDS+=($!); wait_port "$1"; }
# Sum of the "up down" lines written since line $2 of file $1.
counted() { tail -n +"$(( $2 + 1 ))" "$1" | awk '{u+=$1; d+=$2} END {printf "%d %d\n", u, d}'; }
lines() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
wait_count() { for _ in $(seq 100); do [ "$(lines "$1")" -gt "$2" ] && return 0; sleep 0.05; done; }

IMG=$WORK/image.raw
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$IMG"
SRC=$WORK/src
"$BIN" backup "$IMG" --store "$SRC" --volume bench >/dev/null

PORT=$((20000 + RANDOM % 10000))
"$BIN" receive --store "$WORK/ours" --listen "127.0.0.1:$PORT" &
PIDS+=($!)
RPORT=$((PORT + 1))
mkdir -p "$WORK/theirs"
cat >"$WORK/rsyncd.conf" <<EOF
use chroot = no
[dst]
path = $WORK/theirs
read only = no
uid = root
gid = root
EOF
rsync --daemon --no-detach --port "$RPORT" --address 127.0.0.1 --config "$WORK/rsyncd.conf" &
PIDS+=($!)
wait_port "$PORT"
wait_port "$RPORT"
RELAY_OURS=$((PORT + 2)); RELAY_RSYNC=$((PORT + 3))
relay "$RELAY_OURS" "$PORT" "$WORK/count-ours" 0
relay "$RELAY_RSYNC" "$RPORT" "$WORK/count-rsync" 0

ours() { "$BIN" replicate --from "$SRC" --to "127.0.0.1:$1" "${@:2}"; }
theirs() { rsync -a "${@:2}" "$SRC/" "rsync://127.0.0.1:$1/dst/" && sync -f "$WORK/theirs"; }

# Times ours and rsync on the same change, then counts each one's bytes on a copy of the
# step's starting point, through the relays.
step() {
    local name=$1 t0 t1 t2 t3 n
    rm -rf "$WORK/ours.before" "$WORK/theirs.before" "$WORK/theirs.fsync"
    # Hard links: neither tool changes a file in place (both write new files and rename).
    cp -al "$WORK/ours" "$WORK/ours.before"; cp -al "$WORK/theirs" "$WORK/theirs.before"
    cp -al "$WORK/theirs" "$WORK/theirs.fsync"
    sync
    t0=$(now); ours "$PORT" >"$WORK/out" ; t1=$(now)
    theirs "$RPORT"; t2=$(now)
    rsync -a --fsync "$SRC/" "$WORK/theirs.fsync/"; t3=$(now)
    # Same starting points again, now through the counting relays.
    rm -rf "$WORK/ours" "$WORK/theirs"
    mv "$WORK/ours.before" "$WORK/ours"; mv "$WORK/theirs.before" "$WORK/theirs"
    n=$(lines "$WORK/count-ours"); ours "$RELAY_OURS" >/dev/null; wait_count "$WORK/count-ours" "$n"
    read -r ours_up ours_down < <(counted "$WORK/count-ours" "$n")
    n=$(lines "$WORK/count-rsync"); theirs "$RELAY_RSYNC"; wait_count "$WORK/count-rsync" "$n"
    read -r rsync_up rsync_down < <(counted "$WORK/count-rsync" "$n")
    local ours_s rsync_s fsync_s
    ours_s=$(secs "$t0" "$t1"); rsync_s=$(secs "$t1" "$t2"); fsync_s=$(secs "$t2" "$t3")
    echo "$name: ours ${ours_s}s, rsync -a ${rsync_s}s (+ sync), rsync -a --fsync ${fsync_s}s (local, no daemon)"
    echo "$name: wire bytes up/down: ours $ours_up/$ours_down, rsync $rsync_up/$rsync_down"
    echo "$name: ratio throughput ours/rsync: $(ratio "$rsync_s" "$ours_s")   wire bytes ours/rsync: $(ratio "$((ours_up + ours_down))" "$((rsync_up + rsync_down))")"
    rm -rf "$WORK/theirs.fsync"
}

echo "image: $SIZE_MIB MiB random, $CHANGED% of its 1 MiB blocks changed per version, in $WORK"
step initial

# A new version with CHANGED% of the blocks rewritten.
change() {
    local blocks=$SIZE_MIB count=$((SIZE_MIB * CHANGED / 100)) i
    for i in $(shuf -i 0-$((blocks - 1)) -n "$count"); do
        dd if=/dev/urandom of="$IMG" bs=1M count=1 seek="$i" conv=notrunc status=none
    done
    "$BIN" backup "$IMG" --store "$SRC" --volume bench | tail -1
}
change
step incremental

# Resumed after a cut: a third version; the relay cuts the first connection half-way.
change
MISSING=$(for f in "$SRC"/chunks/*/*; do [ -e "$WORK/ours/${f#"$SRC"/}" ] || stat -c %s "$f"; done | awk '{s+=$1} END {print s+0}')
CUT=$((MISSING / 2))
relay $((PORT + 4)) "$PORT" "$WORK/cut-ours" "$CUT"
relay $((PORT + 5)) "$RPORT" "$WORK/cut-rsync" "$CUT"
ours $((PORT + 4)) >/dev/null 2>&1 || true
wait_count "$WORK/cut-ours" 0
n=$(lines "$WORK/count-ours"); ours "$RELAY_OURS" >/dev/null; wait_count "$WORK/count-ours" "$n"
read -r cut_up _ < <(counted "$WORK/cut-ours" 0)
read -r resume_up _ < <(counted "$WORK/count-ours" "$n")
theirs $((PORT + 5)) 2>/dev/null || true
wait_count "$WORK/cut-rsync" 0
n=$(lines "$WORK/count-rsync"); theirs "$RELAY_RSYNC"; wait_count "$WORK/count-rsync" "$n"
read -r rcut_up _ < <(counted "$WORK/cut-rsync" 0)
read -r rresume_up _ < <(counted "$WORK/count-rsync" "$n")
echo "resumed: missing $MISSING bytes; cut after $CUT"
echo "resumed: ours sent $cut_up + $resume_up = $((cut_up + resume_up)) bytes ($(ratio "$((cut_up + resume_up))" "$MISSING") x missing)"
echo "resumed: rsync sent $rcut_up + $rresume_up = $((rcut_up + rresume_up)) bytes ($(ratio "$((rcut_up + rresume_up))" "$MISSING") x missing)"

# restic copy between two repositories holding the same three images, killed half-way.
export RESTIC_PASSWORD=bench
RA=$WORK/restic-a; RB=$WORK/restic-b
restic init -q -r "$RA"
restic init -q -r "$RB" --from-repo "$RA" --copy-chunker-params --from-password-file <(echo bench)
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/img-r"
restic backup -q -r "$RA" "$WORK/img-r"
restic copy -q -r "$RB" --from-repo "$RA" --from-password-file <(echo bench)
for _ in 1 2; do
    dd if=/dev/urandom of="$WORK/img-r" bs=1M count=$((SIZE_MIB * CHANGED / 100)) seek=$((RANDOM % (SIZE_MIB / 2))) conv=notrunc status=none
    restic backup -q -r "$RA" "$WORK/img-r"
done
before=$(du -sb "$RB/data" | cut -f1)
cp -al "$RB" "$WORK/restic-clean"
# What a clean copy of the two new versions writes, then the same copy killed half-way.
restic copy -q -r "$WORK/restic-clean" --from-repo "$RA" --from-password-file <(echo bench)
clean=$(( $(du -sb "$WORK/restic-clean/data" | cut -f1) - before ))
restic copy -q -r "$RB" --from-repo "$RA" --from-password-file <(echo bench) &
COPY=$!
while kill -0 "$COPY" 2>/dev/null && [ "$(du -sb "$RB/data" | cut -f1)" -lt $((before + clean / 2)) ]; do sleep 0.02; done
kill -9 "$COPY" 2>/dev/null || true; wait "$COPY" 2>/dev/null || true
cut_written=$(( $(du -sb "$RB/data" | cut -f1) - before ))
restic unlock -q -r "$RB" 2>/dev/null || true
restic copy -q -r "$RB" --from-repo "$RA" --from-password-file <(echo bench)
total_written=$(( $(du -sb "$RB/data" | cut -f1) - before ))
echo "resumed: restic copy wrote $cut_written before the kill + the rerun = $total_written bytes of packs ($(ratio "$total_written" "$clean") x a clean copy's $clean)"
