#!/usr/bin/env bash
# Times `rehydrate restore` against `qemu-img convert` copying the same NBD export
# (served by qemu-nbd on loopback) into a local file, alternating runs, and prints the
# medians and their ratio. Goal: restore <= 1.1x qemu-img.
#
# `rehydrate restore` ends only when the restored data and its metadata are durable
# (fdatasync); `qemu-img convert` leaves its output in the page cache. So qemu-img is
# timed twice per run: alone, and followed by `sync FILE` (the like-for-like figure).
#
#   benches/restore-vs-qemu-img.sh [RUNS] [SIZE_MIB]
#
# Needs qemu-utils (qemu-nbd, qemu-img) and util-linux (fallocate). Builds the release
# binary first. Set CARGO_TARGET_DIR to reuse a build directory; TMPDIR picks where the
# image and the copies go (a tmpfs there measures the network path, a disk the I/O).
set -euo pipefail

runs="${1:-5}"
size_mib="${2:-1024}"
root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

for tool in qemu-nbd qemu-img fallocate; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install -y qemu-utils util-linux)" >&2; exit 1; }
done

(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-service --bin rehydrate)
rehydrate="$target_dir/release/rehydrate"

work="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The image: random data with zero runs punched as holes (about 1/8 of it), so both
# tools can skip them through block status.
img="$work/image.raw"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$img"
for ((at = 64; at + 16 <= size_mib; at += 128)); do
    fallocate -p -o "$((at * 1024 * 1024))" -l "$((16 * 1024 * 1024))" "$img"
done

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
qemu-nbd --persistent --shared=8 -f raw -b 127.0.0.1 -p "$port" -x bench --read-only "$img" &
server_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done
url="nbd://127.0.0.1:$port/bench"

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }

qemu_times=()
qemu_sync_times=()
restore_times=()
for ((i = 1; i <= runs; i++)); do
    rm -f "$work/out.qemu"
    t0=$(now)
    qemu-img convert -f raw -O raw "$url" "$work/out.qemu"
    t1=$(now)
    qemu_times+=("$(elapsed "$t0" "$t1")")
    sync "$work/out.qemu"
    t2=$(now)
    qemu_sync_times+=("$(elapsed "$t0" "$t2")")

    rm -f "$work/out.rh" "$work/out.rh.rehydrate-meta"
    t0=$(now)
    "$rehydrate" restore --source "$url" --target "$work/out.rh" >/dev/null
    t1=$(now)
    restore_times+=("$(elapsed "$t0" "$t1")")
    printf 'run %d: qemu-img %.3fs  qemu-img+sync %.3fs  rehydrate %.3fs\n' \
        "$i" "${qemu_times[-1]}" "${qemu_sync_times[-1]}" "${restore_times[-1]}"
done
cmp "$img" "$work/out.rh" >/dev/null || { echo "bench: restored image differs" >&2; exit 1; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mq=$(median "${qemu_times[@]}")
ms=$(median "${qemu_sync_times[@]}")
mr=$(median "${restore_times[@]}")
printf 'bench: size_mib=%d runs=%d qemu_img_median_secs=%.3f qemu_img_sync_median_secs=%.3f restore_median_secs=%.3f ratio=%.2f ratio_vs_sync=%.2f\n' \
    "$size_mib" "$runs" "$mq" "$ms" "$mr" "$(echo "$mr / $mq" | bc -l)" "$(echo "$mr / $ms" | bc -l)"
