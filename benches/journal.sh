#!/usr/bin/env bash
# The point-in-time journal's figures (technique T3), from one run:
#  1. write throughput of the live volume with async journaling (`rehydrate protect`)
#     against the live export without it (`rehydrate restore --export`, restored, so a
#     pass-through), the same fio jobs (nbd engine: sequential 1 MiB and random 4 KiB
#     writes, iodepth 16, IO_MIB each), best of two runs each; goal: at most 20% lost;
#  2. reads of a recovery point served by `rehydrate serve` (base chunks + journal)
#     against qemu-nbd serving the qcow2 reference chain (an overlay holding exactly
#     the point's changes over the base image, `qemu-img convert -B base.img`), the
#     same fio jobs (sequential 1 MiB and random 4 KiB reads, iodepth 16, SECS each);
#     goal: at least 0.9x.
# Usage: benches/journal.sh [SIZE_MIB=256] [IO_MIB=256] [SECS=10]
# Everything it makes lives in one temporary directory, removed at the end.
set -euo pipefail
SIZE=${1:-256}; IO=${2:-256}; SECS=${3:-10}
cd "$(dirname "$0")/.."
cargo build --release -q --bin rehydrate
R=$PWD/target/release/rehydrate
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT; cd "$W"
export XDG_RUNTIME_DIR=$W/run; mkdir -m 700 run
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "no listener on $1" >&2; exit 1; }

head -c $((SIZE << 19)) /dev/urandom > base.img; truncate -s ${SIZE}M base.img

bw() { # URL RW BS [io_size|time]: MiB/s of one fio job
    local extra="--io_size=${IO}m"
    case $2 in *read) extra="--time_based --runtime=$SECS";; esac
    # shellcheck disable=SC2086
    fio --name=j --ioengine=nbd --uri="$1" --rw=$2 --bs=$3 --iodepth=16 --size=${SIZE}m \
        $extra --output-format=json --output=fio.json >/dev/null 2>&1
    python3 -c "import json,sys;j=json.load(sys.stdin)['jobs'][0];d=j['read'] if 'read' in '$2' else j['write'];print('%.1f'%(d['bw_bytes']/2**20))" < fio.json
}
best() { # URL RW BS: the better of two runs
    local a b; a=$(bw "$@"); b=$(bw "$@")
    python3 -c "print(max($a,$b))"
}
ratio() { python3 -c "print('%.2f'%($1/$2))"; }

# 1a. Without journaling: the live export of a finished restore (a pass-through).
$R backup base.img --store plain --volume v >/dev/null
S=$(port); $R serve --store plain --listen 127.0.0.1:$S 2>/dev/null & PLAIN=$!
wait_port $S
E=$(port)
$R restore --source nbd://127.0.0.1:$S/v --target live.img --export 127.0.0.1:$E --status-file st.json >/dev/null 2>&1 & LIVE=$!
until $R status --status-file st.json --json 2>/dev/null | grep -q '"phase":"complete"'; do sleep 0.2; done
sleep 1.5   # the last commit and the switch to pass-through
plain_seq=$(best nbd://127.0.0.1:$E/v write 1m)
plain_rand=$(best nbd://127.0.0.1:$E/v randwrite 4k)
kill -TERM $LIVE; wait $LIVE || true
kill $PLAIN; wait $PLAIN 2>/dev/null || true
rm -rf plain live.img live.img.rehydrate-meta

# 1b. With async journaling.
cp base.img disk.img
P=$(port)
$R protect --target disk.img --store store --volume v --export 127.0.0.1:$P --async > protect.out 2>protect.err & PROTECT=$!
wait_port $P
sleep 0.5
journal_seq=$(best nbd://127.0.0.1:$P/v write 1m)
journal_rand=$(best nbd://127.0.0.1:$P/v randwrite 4k)
mark=$($R mark --label bench)
kill -TERM $PROTECT; wait $PROTECT
summary=$(tail -1 protect.out)
echo "write, live export without journaling: seq 1m $plain_seq MiB/s, rand 4k $plain_rand MiB/s"
echo "write, async journaling:               seq 1m $journal_seq MiB/s, rand 4k $journal_rand MiB/s"
echo "write ratio (journaled/plain): seq $(ratio $journal_seq $plain_seq), rand $(ratio $journal_rand $plain_rand)"
echo "$summary"
echo "journal: $(du -sm store/volumes/v/journal | cut -f1) MiB; $mark"

# 2. Reads of the point against qemu-nbd serving the qcow2 reference chain.
S=$(port); $R serve --store store --listen 127.0.0.1:$S 2>/dev/null & SERVE=$!
wait_port $S
# Only the clusters that differ from base.img are written into the overlay.
qemu-img convert -B base.img -F raw -O qcow2 nbd://127.0.0.1:$S/v@mark:bench ref.qcow2
qemu-img compare -q -f qcow2 -F raw ref.qcow2 nbd://127.0.0.1:$S/v@mark:bench
echo "reference chain: ref.qcow2 $(du -m ref.qcow2 | cut -f1) MiB over base.img; identical to the point"
Q=$(port)
qemu-nbd --persistent --shared=8 -f qcow2 -b 127.0.0.1 -p $Q -x ref --read-only ref.qcow2 & QEMU=$!
wait_port $Q
point_seq=$(best nbd://127.0.0.1:$S/v@mark:bench read 1m)
point_rand=$(best nbd://127.0.0.1:$S/v@mark:bench randread 4k)
qemu_seq=$(best nbd://127.0.0.1:$Q/ref read 1m)
qemu_rand=$(best nbd://127.0.0.1:$Q/ref randread 4k)
echo "read, point (rehydrate serve): seq 1m $point_seq MiB/s, rand 4k $point_rand MiB/s"
echo "read, qemu-nbd qcow2 chain:    seq 1m $qemu_seq MiB/s, rand 4k $qemu_rand MiB/s"
echo "read ratio (point/qemu-nbd): seq $(ratio $point_seq $qemu_seq), rand $(ratio $point_rand $qemu_rand)"
kill $QEMU $SERVE
