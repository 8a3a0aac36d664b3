#!/usr/bin/env bash
# Backup and serving throughput of rehydrate-backup, against cp and qemu-nbd.
#
#   benches/backup-and-serve.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 5 runs)
#
# 1. backup:   first backup of a random image into an empty store, against `cp` of the
#              image to the same disk (plain, and followed by an fsync of the copy, since
#              a backup fsyncs what it stores); then a re-backup of the unchanged image.
# 2. serve:    `qemu-img convert` from our server, against the same from `qemu-nbd`
#              serving the raw image.
# Every figure is the median of RUNS wall-clock runs, with warm page cache (the image
# was just written); the last lines give the ratios. Needs qemu-img and qemu-nbd.
set -euo pipefail

SIZE_MIB=${1:-1024}
RUNS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/var/tmp}/rehydrate-bench.XXXXXX")}
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in qemu-img qemu-nbd; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y qemu-utils" >&2; exit 1; }
done

cargo build --release -q -p rehydrate-backup --bin rehydrate-backup
BIN=$CARGO_TARGET_DIR/release/rehydrate-backup

# bash's own clock: a `date` process on each side would add its start-up to every figure.
now() { echo "$EPOCHREALTIME"; }
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# time_runs SETUP CMD: run SETUP (untimed) then CMD, RUNS times; print the median seconds
time_runs() {
    local setup=$1 cmd=$2 t0 t1
    for _ in $(seq "$RUNS"); do
        eval "$setup"
        t0=$(now)
        eval "$cmd" >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l
    done | median
}
rate() { echo "scale=1; $SIZE_MIB / $1" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on port $1" >&2
    exit 1
}

IMG=$WORK/image.raw
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$IMG"
sync "$IMG"
echo "image: $SIZE_MIB MiB of random data, $RUNS runs each, in $WORK"

cp_s=$(time_runs "rm -f $WORK/copy.raw" "cp $IMG $WORK/copy.raw")
# cp + fsync and the first backup in turn, round by round, so a machine shared with other
# work slows each alike.
once() { local t0; t0=$(now); eval "$1" >/dev/null; echo "$(now) - $t0" | bc -l; }
cp_sync_all=(); first_all=()
for _ in $(seq "$RUNS"); do
    rm -f "$WORK/copy.raw"; sync
    cp_sync_all+=("$(once "cp $IMG $WORK/copy.raw && sync $WORK/copy.raw")")
    rm -f "$WORK/copy.raw"; rm -rf "$WORK/store"; sync
    first_all+=("$(once "$BIN backup $IMG --store $WORK/store --volume bench")")
done
cp_sync_s=$(printf '%s\n' "${cp_sync_all[@]}" | median)
first_s=$(printf '%s\n' "${first_all[@]}" | median)
again_s=$(time_runs ":" "$BIN backup $IMG --store $WORK/store --volume bench")

echo "cp:               ${cp_s}s ($(rate "$cp_s") MiB/s)"
echo "cp + fsync:       ${cp_sync_s}s ($(rate "$cp_sync_s") MiB/s)"
echo "first backup:     ${first_s}s ($(rate "$first_s") MiB/s)"
echo "re-backup:        ${again_s}s ($(rate "$again_s") MiB/s)"

PORT_OURS=$((20000 + RANDOM % 10000))
PORT_QEMU=$((PORT_OURS + 1))
"$BIN" serve --store "$WORK/store" --listen "127.0.0.1:$PORT_OURS" &
PIDS+=($!)
qemu-nbd --read-only --persistent --format=raw --bind=127.0.0.1 --port="$PORT_QEMU" "$IMG" &
PIDS+=($!)
wait_port "$PORT_OURS"
wait_port "$PORT_QEMU"

# Convert into an existing file (-n) so both runs pay the same target cost.
: >"$WORK/out.raw"
convert() { echo "qemu-img convert -n -f raw -O raw nbd://127.0.0.1:$1/$2 $WORK/out.raw"; }
truncate -s "$((SIZE_MIB << 20))" "$WORK/out.raw"
ours_s=$(time_runs ":" "$(convert "$PORT_OURS" bench)")
cmp "$IMG" "$WORK/out.raw"
qemu_s=$(time_runs ":" "$(convert "$PORT_QEMU" "")")

echo "serve, ours:      ${ours_s}s ($(rate "$ours_s") MiB/s)"
echo "serve, qemu-nbd:  ${qemu_s}s ($(rate "$qemu_s") MiB/s)"
echo "ratio first-backup/cp: $(ratio "$first_s" "$cp_s")   first-backup/(cp+fsync): $(ratio "$first_s" "$cp_sync_s")"
echo "ratio re-backup/cp: $(ratio "$again_s" "$cp_s")"
echo "ratio serve throughput ours/qemu-nbd: $(ratio "$qemu_s" "$ours_s")"
