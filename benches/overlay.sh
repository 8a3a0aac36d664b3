#!/usr/bin/env bash
# Overlay restore (T2) against the tools that put a copy-on-write layer over a backup.
#
#   reads     nbdcopy of the whole pseudo-volume to null: a fresh `rehydrate restore
#             --overlay --export` (reads of missing regions fetch on demand while the
#             background restore runs) against `nbdkit --filter=cow nbd` over the same
#             source export. Both first take the same writes (WRITES_MIB in 1 MiB
#             pieces spread over the volume). Ratio: throughput of ours over cow's
#             (cow secs / ours secs); the goal is >= 0.9.
#   cutover   downtime of the cutover once the target is complete, against `qemu-img
#             commit` of a qcow2 overlay holding the same writes over a raw copy of the
#             backup (then `sync` of the raw file: our cutover ends durable too). The
#             application is stopped for a whole `qemu-img commit`, and for a whole
#             `rehydrate cutover --offline`; with the online cutover it runs on, and its
#             downtime is the longest stall a reader of the written regions sees while
#             the cutover runs (a qemu-io probe reading 4 KiB every 2 ms). Ratios: ours
#             over commit; the goal is <= 1.0, and a small fraction online.
#
# Rounds alternate the tools (A B A B ...) so a drifting machine slows each alike; each
# line gives medians and the median of the per-round ratios.
#
#   benches/overlay.sh [RUNS=3] [SIZE_MIB=256] [WRITES_MIB=64]
#
# Needs qemu-utils (qemu-nbd, qemu-img, qemu-io), nbdkit (nbd plugin, cow filter),
# libnbd-bin (nbdcopy), python3, bc.
set -euo pipefail

runs=${1:-3}
size_mib=${2:-256}
writes_mib=${3:-64}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
for tool in qemu-nbd qemu-img qemu-io nbdkit nbdcopy python3 bc; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-service --bin rehydrate)
rehydrate=$target_dir/release/rehydrate
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"

img=$work/backup.raw
head -c "$((size_mib << 20))" /dev/urandom >"$img"
source_port=$(free_port)
qemu-nbd -r -f raw -x sys -b 127.0.0.1 -p "$source_port" --persistent --shared=16 "$img" &
pids+=($!)
wait_port "$source_port"
source_url=nbd://127.0.0.1:$source_port/sys

# The writes: 1 MiB pieces spread evenly, as qemu-io commands.
step_mib=$((size_mib / writes_mib))
writes=()
probe=()
for ((i = 0; i < writes_mib; i++)); do
    writes+=(-c "write -P 0x5a $(((i * step_mib) << 20)) 1M")
done
writes+=(-c flush)
for ((i = 0; i < 1500; i++)); do
    probe+=(-c "read $((((i % writes_mib) * step_mib) << 20)) 4k" -c "sleep 2")
done

# Starts a fresh overlay restore exporting on $export_port; $restore_pid.
start_restore() {
    rm -f "$work/t.raw" "$work/t.raw.rehydrate-meta" "$work/o.raw" "$work/status.json"
    export_port=$(free_port)
    "$rehydrate" restore --source "$source_url" --target "$work/t.raw" --overlay "$work/o.raw" \
        --export "127.0.0.1:$export_port" --status-file "$work/status.json" >/dev/null 2>&1 &
    restore_pid=$!
    pids+=("$restore_pid")
    wait_port "$export_port"
}
stop_restore() { kill "$restore_pid" 2>/dev/null || true; wait "$restore_pid" 2>/dev/null || true; }
wait_complete() {
    python3 - "$work/status.json" <<'EOF'
import json, sys, time
for _ in range(6000):
    try:
        s = json.load(open(sys.argv[1]))
        if s["bytes_total"] and s["bytes_restored"] == s["bytes_total"]:
            sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.05)
sys.exit("bench: the restore never completed")
EOF
    sleep 1.2 # the last commit makes D durable (about one a second)
}
# The longest per-read latency (seconds) qemu-io printed: "(... and R ops/sec)".
longest_stall() { grep -o 'and [0-9.]* ops/sec' "$1" | awk '{ l = 1 / $2; if (l > m) m = l } END { printf "%.4f\n", m }'; }

ours_read=() cow_read=() read_ratio=()
commit_s=() offline_s=() online_stall=() offline_ratio=() online_ratio=()
for ((r = 0; r < runs; r++)); do
    # --- reads: ours
    start_restore
    qemu-io -f raw "${writes[@]}" "nbd://127.0.0.1:$export_port/sys" >/dev/null
    t0=$(now)
    nbdcopy "nbd://127.0.0.1:$export_port/sys" null:
    ours=$(since "$t0")
    stop_restore
    # --- reads: nbdkit cow
    cow_port=$(free_port)
    nbdkit -f -p "$cow_port" -i 127.0.0.1 --filter=cow nbd uri="$source_url" &
    cow_pid=$!
    pids+=("$cow_pid")
    wait_port "$cow_port"
    qemu-io -f raw "${writes[@]}" "nbd://127.0.0.1:$cow_port" >/dev/null
    t0=$(now)
    nbdcopy "nbd://127.0.0.1:$cow_port" null:
    cow=$(since "$t0")
    kill "$cow_pid"; wait "$cow_pid" 2>/dev/null || true
    ours_read+=("$ours") cow_read+=("$cow") read_ratio+=("$(echo "$cow / $ours" | bc -l)")

    # --- cutover: qemu-img commit
    cp "$img" "$work/dest.raw"
    qemu-img create -q -f qcow2 -b "$work/dest.raw" -F raw "$work/ov.qcow2"
    qemu-io -f qcow2 "${writes[@]}" "$work/ov.qcow2" >/dev/null
    sync
    t0=$(now)
    qemu-img commit -q "$work/ov.qcow2"
    sync "$work/dest.raw"
    commit=$(since "$t0")
    rm -f "$work/dest.raw" "$work/ov.qcow2"
    # --- cutover: ours, offline (the volume held for the whole merge)
    start_restore
    qemu-io -f raw "${writes[@]}" "nbd://127.0.0.1:$export_port/sys" >/dev/null
    wait_complete
    t0=$(now)
    "$rehydrate" cutover --offline --metadata "$work/t.raw.rehydrate-meta" >/dev/null
    offline=$(since "$t0")
    stop_restore
    # --- cutover: ours, online, with a reader of the written regions running
    start_restore
    qemu-io -f raw "${writes[@]}" "nbd://127.0.0.1:$export_port/sys" >/dev/null
    wait_complete
    qemu-io -f raw "${probe[@]}" "nbd://127.0.0.1:$export_port/sys" >"$work/probe.log" &
    probe_pid=$!
    sleep 0.5
    "$rehydrate" cutover --metadata "$work/t.raw.rehydrate-meta" >/dev/null
    wait "$probe_pid"
    stall=$(longest_stall "$work/probe.log")
    stop_restore
    commit_s+=("$commit") offline_s+=("$offline") online_stall+=("$stall")
    offline_ratio+=("$(echo "$offline / $commit" | bc -l)")
    online_ratio+=("$(echo "$stall / $commit" | bc -l)")
done

printf 'reads (%s MiB, %s MiB written first): ours %.3f s, nbdkit cow %.3f s; throughput ratio ours/cow %.2fx (goal >= 0.9)\n' \
    "$size_mib" "$writes_mib" "$(median "${ours_read[@]}")" "$(median "${cow_read[@]}")" "$(median "${read_ratio[@]}")"
printf 'cutover (%s MiB of writes): qemu-img commit %.3f s; rehydrate cutover --offline %.3f s (%.2fx, goal <= 1.0); online: longest stall %.4f s (%.3fx)\n' \
    "$writes_mib" "$(median "${commit_s[@]}")" "$(median "${offline_s[@]}")" "$(median "${offline_ratio[@]}")" \
    "$(median "${online_stall[@]}")" "$(median "${online_ratio[@]}")"
