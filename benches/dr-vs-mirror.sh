#!/usr/bin/env bash
# Copy-on-read disaster recovery (T5) against QEMU's mirror on the same volume, all on
# loopback, with the ratios the issue asks for:
#  1. initial sync time: `rehydrate dr primary` → `dr secondary` from the primary's
#     session start until every region is durably at the DR site (both instants from
#     the primary's log), against qemu-storage-daemon's blockdev-mirror
#     (copy-mode=background) to an NBD target (qemu-nbd) from the blockdev-mirror
#     command until BLOCK_JOB_READY; ratio = mirror secs / ours (the issue wants ≥ 0.9).
#     Both source copies are flushed first, so neither pays for writing back the copy
#     this script just made; the wall time of ours with process start-up and status
#     polling is printed beside;
#  2. primary write p99 during the sync: fio random 4 KiB writes (iodepth 1) on the
#     primary's export while the sync runs, against the same fio on qemu-storage-daemon's
#     NBD export of the source while a copy-mode=write-blocking mirror runs; ratio =
#     ours / mirror's (the issue wants < 1);
#  3. DR miss p99: fio random 4 KiB reads (iodepth 1) on the DR export while regions
#     are missing (the background sync held at 64 KiB/s), against the same reads once
#     the copy is complete; ratio = miss / idle (the issue wants ≤ 2).
# Usage: [PARTS="1 2 3"] [ROUNDS=5] [REHYDRATE=BINARY] benches/dr-vs-mirror.sh [SIZE_MIB=256] [SECS=5]
# (PARTS names the parts to run, all by default; REHYDRATE a `rehydrate` binary to
# measure instead of building this tree's, to compare two builds in turns.)
set -euo pipefail
SIZE=${1:-256}; SECS=${2:-5}; PARTS=${PARTS:-1 2 3}; ROUNDS=${ROUNDS:-5}
part() { [[ " $PARTS " == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
if [[ -n ${REHYDRATE:-} ]]; then
    R=$(realpath "$REHYDRATE")
else
    cargo build --release -q --bin rehydrate
    R=$PWD/target/release/rehydrate
fi
source benches/common.sh
cd "$work"
head -c $((SIZE << 20)) /dev/urandom > src.img

start_pair() { # EXTRA_PRIMARY_ARGS...: fresh DR copy, primary from a copy of src.img
    rm -f p.img p.img.dr-meta d.img d.img.dr-meta; cp src.img p.img; sync p.img
    L=$(free_port); DE=$(free_port); PE=$(free_port)
    $R dr secondary --target d.img --listen 127.0.0.1:$L --export 127.0.0.1:$DE 2>/dev/null & pids+=($!); SEC=$!
    wait_port $L
    RUST_LOG=warn,rehydrate_service::dr::primary=info \
        $R dr primary --target p.img --export 127.0.0.1:$PE --peer 127.0.0.1:$L "$@" 2>primary.log & pids+=($!); PRI=$!
    wait_port $PE; wait_port $DE
}
stop_pair() { kill $PRI $SEC 2>/dev/null; wait $PRI $SEC 2>/dev/null || true; }
complete() { $R dr status --target p.img | grep -q complete=true; }

fio_p99() { # URL RW: p99 completion latency in us of 4 KiB random I/O at iodepth 1
    fio --name=lat --ioengine=nbd --uri="$1" --rw=$2 --bs=4k --iodepth=1 --size=$((SIZE))m \
        --time_based --runtime=$SECS --output-format=json --output=fio.json >/dev/null 2>&1
    python3 -c 'import json,sys;j=json.load(sys.stdin)["jobs"][0];d=j["read"] if j["read"]["io_bytes"] else j["write"];print("%.0f"%(d["clat_ns"]["percentile"]["99.000000"]/1e3))' < fio.json
}

# QMP over a unix socket: send each command, wait for an event.
qmp() { # SOCKET WAIT_EVENT JSON...
    python3 - "$@" <<'PY'
import json, socket, sys, time
path, wait_event, cmds = sys.argv[1], sys.argv[2], sys.argv[3:]
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rw")
def read():
    while True:
        m = json.loads(f.readline())
        if "QMP" not in m: return m
read_greeting = json.loads(f.readline())
f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n"); f.flush(); read()
t0 = time.time()
for c in cmds:
    f.write(c + "\n"); f.flush()
    while True:
        m = read()
        if "return" in m or "error" in m:
            if "error" in m: sys.exit("qmp: " + json.dumps(m))
            break
while wait_event != "-":
    m = read()
    if m.get("event") == wait_event:
        break
print("%.3f" % (time.time() - t0))
PY
}

mirror_start() { # MODE: qemu-storage-daemon mirroring src copy to a qemu-nbd target; prints nothing
    rm -f q.img t.img; cp src.img q.img; sync q.img; truncate -s $((SIZE << 20)) t.img
    TP=$(free_port); QE=$(free_port)
    qemu-nbd -f raw -b 127.0.0.1 -p $TP -x t --persistent t.img & pids+=($!); QNBD=$!
    wait_port $TP
    qemu-storage-daemon --blockdev file,node-name=file0,filename=q.img \
        --blockdev raw,node-name=src,file=file0 \
        --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=$QE \
        --export nbd,id=e0,node-name=src,name=src,writable=on \
        --chardev socket,id=qmp0,path=qmp.sock,server=on,wait=off --monitor chardev=qmp0 & pids+=($!); QSD=$!
    wait_port $QE
    MIRROR_CMDS=(
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"nbd\",\"node-name\":\"tgt\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"$TP\"},\"export\":\"t\"}}"
        "{\"execute\":\"blockdev-mirror\",\"arguments\":{\"job-id\":\"m\",\"device\":\"src\",\"target\":\"tgt\",\"sync\":\"full\",\"copy-mode\":\"$1\"}}"
    )
}
mirror_stop() { kill $QSD $QNBD 2>/dev/null; wait $QSD $QNBD 2>/dev/null || true; }

# 1. Initial sync time, ROUNDS rounds of ours then the mirror (one figure of each is at
# the mercy of the disk's writeback); the medians and the median of the rounds' ratios.
if part 1; then
ours=(); ours_walls=(); mirrors=(); ratios=()
for ((round = 1; round <= ROUNDS; round++)); do
    t0=$(now); start_pair
    until complete; do sleep 0.05; done
    ours_walls+=("$(since $t0)"); stop_pair
    cmp -s p.img d.img || { echo "bench: the DR copy differs from the primary" >&2; exit 1; }
    # From the session's start to "every region is durably at the DR site", in the
    # log's RFC 3339 timestamps.
    ours+=("$(python3 - primary.log <<'PY'
import datetime, sys
def at(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
lines = open(sys.argv[1]).read().splitlines()
start = next(at(l) for l in lines if "session with the DR site" in l)
end = next(at(l) for l in lines if "durably at the DR site" in l)
print("%.3f" % (end - start))
PY
)")
    mirror_start background
    mirrors+=("$(qmp qmp.sock BLOCK_JOB_READY "${MIRROR_CMDS[@]}")"); mirror_stop
    ratios+=("$(echo "${mirrors[-1]} / ${ours[-1]}" | bc -l)")
    printf 'initial sync round %d: ours %.3f s, mirror %.3f s, ratio %.2f\n' \
        $round ${ours[-1]} ${mirrors[-1]} ${ratios[-1]}
done
printf 'initial sync %s MiB: ours %.2f s (wall with start-up and polling %.2f s), blockdev-mirror (background) %.2f s, ratio mirror/ours %.2f (median of %d rounds; want >= 0.9)\n' \
    $SIZE $(median "${ours[@]}") $(median "${ours_walls[@]}") $(median "${mirrors[@]}") $(median "${ratios[@]}") $ROUNDS
fi

# 2. Primary write p99 during the sync (the sync slowed so it runs for the whole fio).
if part 2; then
start_pair --sync-rate $(( (SIZE << 20) / (SECS * 2) ))
ours_w=$(fio_p99 nbd://127.0.0.1:$PE/ randwrite)
complete && echo "bench: warning: our sync ended before fio did" >&2
stop_pair
mirror_start write-blocking
qmp qmp.sock - "${MIRROR_CMDS[@]}" >/dev/null
mirror_w=$(fio_p99 nbd://127.0.0.1:$QE/src randwrite); mirror_stop
printf 'primary write p99 during sync: ours %s us, write-blocking mirror %s us, ratio ours/mirror %.2f (want < 1)\n' \
    $ours_w $mirror_w $(echo "$ours_w / $mirror_w" | bc -l)
fi

# 3. DR miss p99 against an idle read of the complete copy.
if part 3; then
start_pair --sync-rate 64KiB
miss=$(fio_p99 nbd://127.0.0.1:$DE/ randread)
kill $PRI; wait $PRI 2>/dev/null || true
$R dr primary --target p.img --export 127.0.0.1:$PE --peer 127.0.0.1:$L 2>/dev/null & pids+=($!); PRI=$!
until complete; do sleep 0.05; done
idle=$(fio_p99 nbd://127.0.0.1:$DE/ randread); stop_pair
printf 'DR read p99: miss %s us, idle %s us, ratio miss/idle %.2f (want <= 2)\n' \
    $miss $idle $(echo "$miss / $idle" | bc -l)
fi
