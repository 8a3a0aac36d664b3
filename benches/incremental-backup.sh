#!/usr/bin/env bash
# Re-backup of a restored volume with 1% of it changed: with the live export's map of
# changes (`rehydrate backup --changed-map`) against a full re-backup of the same image.
# Goal: at least 20x faster.
#
# A SIZE_MIB random image is backed up, restored with `--export`, and 1% of its regions
# are rewritten through the export in WRITE_KIB writes at random offsets (1 MiB writes
# touch 1% of the 1 MiB chunks; smaller writes spread over more chunks, and a backup
# reads whole chunks); then the export is stopped cleanly. Each round restores the
# metadata as the export left it (a backup with the map resets the map; not timed) and
# times both commands in turn, so a machine whose speed drifts slows each alike.
# Each round also times a backup with the map when nothing changed since the last
# backup: what any backup with the map costs before it reads a byte (starting the
# process, opening the metadata and the base, publishing a version, resetting the map).
# The full re-backup over that is the most any backup with the map can gain here
# (`ceiling`): the speedup cannot pass it, however little is read.
# CACHE=warm (default) leaves the image in the page cache, as just written; CACHE=cold
# drops it from the cache before each command (POSIX_FADV_DONTNEED), as for a volume
# backed up a day after it was written.
#
#   [CACHE=warm|cold] benches/incremental-backup.sh [SIZE_MIB=1024] [WRITE_KIB=1024] [ROUNDS=5]
#
# REHYDRATE_BIN names a built `rehydrate` to measure instead of building this tree's
# (to compare two builds under the same conditions).
#
# Needs qemu-utils (qemu-io). TMPDIR picks where the image and the store go.
set -euo pipefail

size_mib=${1:-1024}
write_kib=${2:-1024}
rounds=${3:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
command -v qemu-io >/dev/null || { echo "bench: qemu-io is missing (apt-get install -y qemu-utils)" >&2; exit 1; }
if [ -n "${REHYDRATE_BIN:-}" ]; then
    R=$REHYDRATE_BIN
else
    (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-service --bin rehydrate)
    R=$target_dir/release/rehydrate
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "no listener on $1" >&2; exit 1; }
# secs CMD...: CMD's wall seconds, on bash's own clock (a `date` process, or a subshell,
# on each side would add its start-up to every figure).
secs() { local t0=$EPOCHREALTIME; "$@" >/dev/null 2>&1; echo "$EPOCHREALTIME - $t0" | bc -l; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

head -c "$((size_mib << 20))" /dev/urandom >disk.img
$R backup disk.img --store store --volume vol >/dev/null
src=$(port); $R serve --store store --listen "127.0.0.1:$src" 2>/dev/null & pids+=($!)
wait_port "$src"
exp=$(port)
$R restore --source "nbd://127.0.0.1:$src/vol" --target t.img --export "127.0.0.1:$exp" --status-file st.json >/dev/null 2>&1 &
live=$!
until $R status --status-file st.json --json 2>/dev/null | grep -q "\"bytes_restored\":$((size_mib << 20))"; do sleep 0.2; done

# 1% of the 4 KiB regions, rewritten in WRITE_KIB pieces at random aligned offsets.
changed_kib=$((size_mib * 1024 / 100))
writes=$(( (changed_kib + write_kib - 1) / write_kib ))
cmds=()
for ((i = 0; i < writes; i++)); do
    at=$(( (RANDOM * 32768 + RANDOM) % (size_mib * 1024 / write_kib) * write_kib ))
    cmds+=(-c "write -P $((i % 250 + 1)) ${at}k ${write_kib}k")
done
qemu-io -f raw "${cmds[@]}" -c flush "nbd://127.0.0.1:$exp/vol" >/dev/null
kill -TERM "$live"; wait "$live"
cp t.img.rehydrate-meta meta.snapshot
# The 1 GiB written to set this up would otherwise still be going to the disk during the
# first rounds, stalling every fsync the commands make behind it.
sync

inc=(); full=(); none=(); ratios=(); ceilings=()
cache=${CACHE:-warm}
setup() {
    cp "${1:-meta.snapshot}" t.img.rehydrate-meta
    [ "$cache" = cold ] && python3 -c 'import os; f=os.open("t.img", os.O_RDONLY); os.posix_fadvise(f, 0, 0, os.POSIX_FADV_DONTNEED)'
    true
}
incremental() { $R backup t.img --store store --volume vol --changed-map t.img.rehydrate-meta; }
setup
line=$(incremental 2>&1 | tail -1)
case $line in *incremental_from=*) ;; *) echo "bench: the backup did not use the map: $line" >&2; exit 1;; esac
echo "incremental: $line"
# The metadata that backup left: the map empty, counting from the version it published.
cp t.img.rehydrate-meta meta.unchanged
line=$(incremental 2>&1 | tail -1)
case $line in *read_bytes=0) ;; *) echo "bench: a backup with nothing changed read something: $line" >&2; exit 1;; esac
for ((i = 1; i <= rounds; i++)); do
    setup; inc+=("$(secs incremental)")
    setup; full+=("$(secs $R backup t.img --store store --volume vol)")
    setup meta.unchanged; none+=("$(secs incremental)")
    ratios+=("$(echo "${full[-1]} / ${inc[-1]}" | bc -l)")
    ceilings+=("$(echo "${full[-1]} / ${none[-1]}" | bc -l)")
    printf 'round %d: with the map %.4fs  full re-backup %.4fs  nothing changed %.4fs\n' "$i" "${inc[-1]}" "${full[-1]}" "${none[-1]}"
done
printf 'bench: size_mib=%d changed_kib=%d writes=%d write_kib=%d cache=%s rounds=%d incremental_secs=%.4f full_rebackup_secs=%.4f unchanged_secs=%.4f speedup=%.1f ceiling=%.1f\n' \
    "$size_mib" "$changed_kib" "$writes" "$write_kib" "$cache" "$rounds" "$(median "${inc[@]}")" "$(median "${full[@]}")" "$(median "${none[@]}")" "$(median "${ratios[@]}")" "$(median "${ceilings[@]}")"
