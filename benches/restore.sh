#!/usr/bin/env bash
# Full-restore throughput: `rehydrate restore` of an NBD export served by qemu-nbd on
# loopback, against the other ways to copy the same export into a file:
#
#   nbdcopy + sync     libnbd's copier (4 connections, 64 requests in flight each) into
#                      a file, then `sync FILE`: like for like, since a restore ends only
#                      when its data and metadata are durable. The goal: restore <= 1.0x.
#   qemu-img + sync    `qemu-img convert` into a file, then `sync FILE`.
#   nbdcopy null:      nbdcopy reading everything and writing nothing: what the network
#                      path alone allows. The gap to it is what the restore costs above
#                      moving the bytes (writing the file, making it durable, tracking).
#   direct write:      fio writing the image's data bytes (the holes left out) to a new
#                      file sequentially, O_DIRECT, 4 MiB writes two at a time, flushed:
#                      the disk's own sequential write speed without the page cache or
#                      the network, to tell a disk-bound run from one that is not (it
#                      is a reference, not a bound: buffered writeback with a deeper
#                      queue can beat it).
#
# The image is random data with holes (16 MiB punched every 128 MiB, 1/8 of it), so
# every tool can skip them through block status. The four commands run in turn, RUNS
# times (A B C D A B C D ...), so a machine whose speed drifts slows each alike; each
# line gives the medians and the median of the per-round ratios.
#
#   benches/restore.sh [RUNS=5] [SIZES_MIB="1024 4096"]
#
# REHYDRATE_BIN names a built `rehydrate` to measure instead of building this tree's
# (to compare two builds under the same conditions).
#
# Needs qemu-utils (qemu-nbd, qemu-img), libnbd-bin (nbdcopy), util-linux (fallocate), fio.
# TMPDIR picks where the image and the copies go (a disk measures the I/O, a tmpfs the
# rest); it needs twice the largest size free.
set -euo pipefail

runs=${1:-5}
sizes=${2:-"1024 4096"}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
for tool in qemu-nbd qemu-img nbdcopy fallocate fio python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
if [ -n "${REHYDRATE_BIN:-}" ]; then
    rehydrate=$REHYDRATE_BIN
else
    (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-service --bin rehydrate)
    rehydrate=$target_dir/release/rehydrate
fi

work=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# bash's own clock: a `date` process on each side would add its start-up to every figure.
now() { echo "$EPOCHREALTIME"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
# secs CMD...: runs CMD (untimed setup is the caller's), prints its wall seconds
secs() { local t0; t0=$(now); "$@" >/dev/null 2>&1; echo "$(now) - $t0" | bc -l; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Each copy is removed once timed (not timed itself), so only one exists at a time.
restore() { rm -f "$work/out.rh" "$work/out.rh.rehydrate-meta"; secs "$rehydrate" restore --source "$url" --target "$work/out.rh"; }
nbdcopy_sync() { local t; t=$(secs sh -c "nbdcopy '$url' '$work/out.nc' && sync '$work/out.nc'"); rm -f "$work/out.nc"; echo "$t"; }
qemu_sync() { local t; t=$(secs sh -c "qemu-img convert -f raw -O raw '$url' '$work/out.qi' && sync '$work/out.qi'"); rm -f "$work/out.qi"; echo "$t"; }
nbdcopy_null() { secs nbdcopy "$url" null:; }
direct_write() { # DATA_MIB
    local t
    t=$(secs fio --name=direct --filename="$work/out.direct" --rw=write --bs=4M --size="$1M" \
        --direct=1 --ioengine=libaio --iodepth=2 --end_fsync=1)
    rm -f "$work/out.direct"; echo "$t"
}

for size_mib in $sizes; do
    img=$work/image.raw
    head -c "$((size_mib << 20))" /dev/urandom >"$img"
    data_mib=$size_mib
    for ((at = 64; at + 16 <= size_mib; at += 128)); do
        fallocate -p -o "$((at << 20))" -l "$((16 << 20))" "$img"
        data_mib=$((data_mib - 16))
    done
    p=$(port)
    qemu-nbd --persistent --shared=16 -f raw -b 127.0.0.1 -p "$p" -x bench --read-only "$img" &
    server=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
    url=nbd://127.0.0.1:$p/bench

    # One round unmeasured (page cache, connections), and the result checked.
    restore >/dev/null
    cmp "$img" "$work/out.rh" || { echo "bench: the restored image differs" >&2; exit 1; }
    r=(); n=(); q=(); z=(); f=(); rn=(); rq=(); rz=(); rf=()
    for ((i = 1; i <= runs; i++)); do
        r+=("$(restore)"); rm -f "$work/out.rh" "$work/out.rh.rehydrate-meta"
        n+=("$(nbdcopy_sync)"); q+=("$(qemu_sync)"); z+=("$(nbdcopy_null)"); f+=("$(direct_write "$data_mib")")
        rn+=("$(echo "${r[-1]} / ${n[-1]}" | bc -l)")
        rq+=("$(echo "${r[-1]} / ${q[-1]}" | bc -l)")
        rz+=("$(echo "${r[-1]} / ${z[-1]}" | bc -l)")
        rf+=("$(echo "${r[-1]} / ${f[-1]}" | bc -l)")
        printf 'size %d MiB round %d: restore %.3fs  nbdcopy+sync %.3fs  qemu-img+sync %.3fs  nbdcopy null: %.3fs  direct write %.3fs\n' \
            "$size_mib" "$i" "${r[-1]}" "${n[-1]}" "${q[-1]}" "${z[-1]}" "${f[-1]}"
    done
    rm -f "$work/out.rh" "$work/out.rh.rehydrate-meta" "$work/out.nc" "$work/out.qi"
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
    printf 'bench: size_mib=%d runs=%d restore_secs=%.3f nbdcopy_sync_secs=%.3f qemu_img_sync_secs=%.3f nbdcopy_null_secs=%.3f direct_write_secs=%.3f ratio_vs_nbdcopy_sync=%.2f ratio_vs_qemu_img_sync=%.2f ratio_vs_nbdcopy_null=%.2f ratio_vs_direct_write=%.2f\n' \
        "$size_mib" "$runs" "$(median "${r[@]}")" "$(median "${n[@]}")" "$(median "${q[@]}")" "$(median "${z[@]}")" "$(median "${f[@]}")" \
        "$(median "${rn[@]}")" "$(median "${rq[@]}")" "$(median "${rz[@]}")" "$(median "${rf[@]}")"
done
