#!/usr/bin/env bash
# The live export's figures (issue: instant restore on Linux), from one run:
#  1. first read: time from starting `rehydrate restore --export` to the first 4 KiB
#     read answered, for a SMALL_GIB and a LARGE_GIB source (mostly sparse: size, not
#     data, is what setup could depend on);
#  2. on-demand miss latency p50/p99 of random 4 KiB reads (fio, nbd engine, iodepth 1)
#     while the sweep runs at full speed, against the same reads with the sweep paused
#     (--rate-limit 4KiB);
#  3. after completion, fio sequential and random read/write throughput of the live
#     export (a pass-through by then) against qemu-nbd serving the same file, the two
#     measured in turn ROUNDS times; each line gives the medians and the median ratio.
# Usage: benches/live-export.sh [SMALL_GIB=1] [LARGE_GIB=8] [DATA_MIB=1024] [SECS=10] [ROUNDS=5]
set -euo pipefail
SMALL=${1:-1}; LARGE=${2:-8}; DATA=${3:-1024}; SECS=${4:-10}; ROUNDS=${5:-5}
cd "$(dirname "$0")/.."
cargo build --release -q --bin rehydrate
R=$PWD/target/release/rehydrate
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT; cd "$W"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "no listener on $1" >&2; exit 1; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

image() { # NAME GIB: DATA_MIB of random data at the start, the rest sparse
    head -c $((DATA << 20)) /dev/urandom > $1.img; truncate -s $2G $1.img
    $R backup $1.img --store store --volume $1 >/dev/null
}
image small $SMALL; image large $LARGE
SRC=$(port); $R serve --store store --listen 127.0.0.1:$SRC 2>/dev/null & SERVE=$!
wait_port $SRC

first_read() { # VOLUME
    local exp; exp=$(port); rm -f t-$1.img t-$1.img.rehydrate-meta
    local t0; t0=$(ms_now)
    $R restore --source nbd://127.0.0.1:$SRC/$1 --target t-$1.img --export 127.0.0.1:$exp --rate-limit 64MiB >/dev/null 2>&1 & local pid=$!
    until qemu-io -f raw -c "read 0 4k" nbd://127.0.0.1:$exp/$1 >/dev/null 2>&1; do sleep 0.002; done
    echo "first-read $1 (${2}GiB): $(( $(ms_now) - t0 )) ms"
    kill -TERM $pid; wait $pid || true
}
first_read small $SMALL; first_read large $LARGE

fio_lat() { # URL RATE: p50 and p99 completion latency of random 4 KiB reads, in us
    fio --name=miss --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth=1 \
        --size=$((DATA))m --time_based --runtime=$SECS --output-format=json --output=fio.json >/dev/null 2>&1
    python3 -c 'import json,sys;j=json.load(sys.stdin)["jobs"][0]["read"]["clat_ns"]["percentile"];print("p50_us=%.0f p99_us=%.0f"%(j["50.000000"]/1e3,j["99.000000"]/1e3))' < fio.json
}
miss_latency() { # LABEL RATE
    local exp; exp=$(port); rm -f t-m.img t-m.img.rehydrate-meta
    $R restore --source nbd://127.0.0.1:$SRC/large --target t-m.img --export 127.0.0.1:$exp $2 >/dev/null 2>&1 & local pid=$!
    wait_port $exp
    echo "miss latency, $1: $(fio_lat nbd://127.0.0.1:$exp/large)"
    kill -TERM $pid; wait $pid || true
}
miss_latency "sweep at full speed" ""
miss_latency "sweep paused" "--rate-limit 4KiB"

fio_rate() { # URL RW BS: MiB/s of one fio run
    fio --name=t --ioengine=nbd --uri="$1" --rw=$2 --bs=$3 --iodepth=16 --size=$((DATA))m \
        --time_based --runtime=$SECS --output-format=json --output=fio.json >/dev/null 2>&1
    python3 -c "import json,sys;j=json.load(sys.stdin)['jobs'][0];d=j['read'] if 'read' in '$2' else j['write'];print('%.1f'%(d['bw_bytes']/2**20))" < fio.json
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
exp=$(port); rm -f t-s.img t-s.img.rehydrate-meta
$R restore --source nbd://127.0.0.1:$SRC/small --target t-s.img --export 127.0.0.1:$exp --status-file st.json >/dev/null 2>&1 & pid=$!
until $R status --status-file st.json --json 2>/dev/null | grep -q '"bytes_restored":'"$((SMALL << 30))"; do sleep 0.2; done
sleep 1.5   # the last commit and the switch to pass-through
# qemu-nbd serves the same file meanwhile (its locks and ours do not conflict); the two
# are measured in turn, ROUNDS times, so a machine whose speed drifts slows both alike.
q=$(port); qemu-nbd --persistent -f raw -b 127.0.0.1 -p $q -x small --shared=8 --cache=writeback t-s.img & QEMU=$!
wait_port $q
for rw in read write randread randwrite; do
    bs=1m; case $rw in rand*) bs=4k;; esac
    ours=(); theirs=(); ratios=()
    for _ in $(seq $ROUNDS); do
        ours+=("$(fio_rate nbd://127.0.0.1:$exp/small $rw $bs)")
        theirs+=("$(fio_rate nbd://127.0.0.1:$q/small $rw $bs)")
        ratios+=("$(echo "${ours[-1]} / ${theirs[-1]}" | bc -l)")
    done
    printf 'after completion %s bs=%s: live export %.1f MiB/s, qemu-nbd %.1f MiB/s, ratio %.2f (median of %d rounds)\n' \
        $rw $bs "$(median "${ours[@]}")" "$(median "${theirs[@]}")" "$(median "${ratios[@]}")" $ROUNDS
done
kill -TERM $pid; wait $pid || true
kill $QEMU $SERVE
