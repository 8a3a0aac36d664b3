#!/usr/bin/env bash
# The point-in-time journal's figures (technique T3), from one run:
#  1. write throughput of the live volume with async journaling (`rehydrate protect`)
#     against the live export without it (`rehydrate restore --export`, restored, so a
#     pass-through), the same fio jobs (nbd engine: sequential 1 MiB and random 4 KiB
#     writes, iodepth 16, IO_MIB each). Both servers run side by side and the runs
#     alternate, RUNS times each; the figure is the median. The servers' CPU time per
#     GiB written is printed too: it does not depend on what else the machine runs.
#     Goal: journaling costs at most 20% of the throughput;
#  2. reads of a recovery point served by `rehydrate serve` (base chunks + journal)
#     against qemu-nbd serving the qcow2 reference chain (an overlay holding exactly
#     the point's changes over the base image, `qemu-img convert -B base.img`), the
#     same fio jobs (sequential 1 MiB and random 4 KiB reads, iodepth 16, SECS each),
#     alternating, median of RUNS. Goal: at least 0.9x.
# Usage: benches/journal.sh [SIZE_MIB=256] [IO_MIB=256] [SECS=10] [RUNS=3]
# Everything it makes lives in one temporary directory, removed at the end.
set -euo pipefail
SIZE=${1:-256}; IO=${2:-256}; SECS=${3:-10}; RUNS=${4:-3}
cd "$(dirname "$0")/.."
cargo build --release -q --bin rehydrate
R=$PWD/target/release/rehydrate
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT; cd "$W"
export XDG_RUNTIME_DIR=$W/run; mkdir -m 700 run
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "no listener on $1" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }

head -c $((SIZE << 19)) /dev/urandom > base.img; truncate -s ${SIZE}M base.img

# fio_job URL RW BS PID: prints "MiB/s cpu_ms_per_GiB" of one fio job against the
# server PID.
fio_job() {
    local extra="--io_size=${IO}m"
    case $2 in *read) extra="--time_based --runtime=$SECS";; esac
    local before; before=$(cpu_ticks "$4")
    # shellcheck disable=SC2086
    fio --name=j --ioengine=nbd --uri="$1" --rw=$2 --bs=$3 --iodepth=16 --size=${SIZE}m \
        $extra --output-format=json --output=fio.json >/dev/null 2>&1
    local ticks=$(( $(cpu_ticks "$4") - before ))
    python3 -c "
import json,os;j=json.load(open('fio.json'))['jobs'][0];d=j['read'] if 'read' in '$2' else j['write']
gib=d['io_bytes']/2**30;hz=os.sysconf('SC_CLK_TCK')
print('%.1f %.0f'%(d['bw_bytes']/2**20, $ticks*1000/hz/max(gib,1e-9)))"
}
# compare LABEL_A URL_A PID_A LABEL_B URL_B PID_B RW BS: alternating runs, medians.
compare() {
    local a=() b=()
    for _ in $(seq "$RUNS"); do
        a+=("$(fio_job "$2" "$7" "$8" "$3")"); b+=("$(fio_job "$5" "$7" "$8" "$6")")
    done
    python3 - "$1" "$4" "$7" "$8" "${a[@]}" -- "${b[@]}" <<'PY'
import statistics,sys
la,lb,rw,bs=sys.argv[1:5];rest=sys.argv[5:];i=rest.index('--');A=rest[:i];B=rest[i+1:]
med=lambda v,k:statistics.median(float(x.split()[k]) for x in v)
a,b=med(A,0),med(B,0)
print(f"{rw} {bs}: {la} {a:.1f} MiB/s ({med(A,1):.0f} cpu ms/GiB), {lb} {b:.1f} MiB/s ({med(B,1):.0f} cpu ms/GiB), ratio {b/a:.2f}   runs {[x.split()[0] for x in A]} {[x.split()[0] for x in B]}")
PY
}

# 1. The live export without journaling (a finished restore) and protect, side by side.
$R backup base.img --store plain --volume v >/dev/null
S=$(port); $R serve --store plain --listen 127.0.0.1:$S 2>/dev/null & PLAIN=$!
wait_port $S
E=$(port)
$R restore --source nbd://127.0.0.1:$S/v --target live.img --export 127.0.0.1:$E --status-file st.json >/dev/null 2>&1 & LIVE=$!
until $R status --status-file st.json --json 2>/dev/null | grep -q '"bytes_restored":'"$((SIZE << 20))"; do sleep 0.2; done
sleep 1.5   # the last commit and the switch to pass-through
cp base.img disk.img
P=$(port)
$R protect --target disk.img --store store --volume v --export 127.0.0.1:$P --async > protect.out 2>protect.err & PROTECT=$!
wait_port $P
echo "write (plain: live export without journaling; journaled: rehydrate protect --async)"
compare plain nbd://127.0.0.1:$E/v $LIVE journaled nbd://127.0.0.1:$P/v $PROTECT write 1m
compare plain nbd://127.0.0.1:$E/v $LIVE journaled nbd://127.0.0.1:$P/v $PROTECT randwrite 4k
mark=$($R mark --label bench)
kill -TERM $LIVE $PROTECT; wait $LIVE $PROTECT || true
kill $PLAIN; wait $PLAIN 2>/dev/null || true
rm -rf plain live.img live.img.rehydrate-meta
echo "$(tail -1 protect.out)"
echo "journal: $(du -sm store/volumes/v/journal | cut -f1) MiB; $mark"

# 2. Reads of the point against qemu-nbd serving the qcow2 reference chain.
S=$(port); $R serve --store store --listen 127.0.0.1:$S 2>/dev/null & SERVE=$!
wait_port $S
# Only the clusters that differ from base.img are written into the overlay.
qemu-img convert -B base.img -F raw -O qcow2 nbd://127.0.0.1:$S/v@mark:bench ref.qcow2
qemu-img compare -q -f qcow2 -F raw ref.qcow2 nbd://127.0.0.1:$S/v@mark:bench
echo "reference chain: ref.qcow2 $(du -m ref.qcow2 | cut -f1) MiB over base.img, identical to the point"
Q=$(port)
qemu-nbd --persistent --shared=8 -f qcow2 -b 127.0.0.1 -p $Q -x ref --read-only ref.qcow2 & QEMU=$!
wait_port $Q
echo "read (qemu-nbd: the qcow2 chain; point: rehydrate serve v@mark:bench)"
compare qemu-nbd nbd://127.0.0.1:$Q/ref $QEMU point nbd://127.0.0.1:$S/v@mark:bench $SERVE read 1m
compare qemu-nbd nbd://127.0.0.1:$Q/ref $QEMU point nbd://127.0.0.1:$S/v@mark:bench $SERVE randread 4k
kill $QEMU $SERVE
