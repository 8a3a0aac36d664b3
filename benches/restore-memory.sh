#!/usr/bin/env bash
# Peak memory (RSS) of a whole restore, by volume size: it must grow only by the region
# maps (one bit per region: 32 KiB per GiB at 4 KiB regions, plus a small summary, for
# the restore map and again for the map of changes since the backup), not with the
# data restored. Each source is SIZE GiB with DATA_MIB of random data at the
# start and the rest sparse (restored through block status without a transfer), served
# by qemu-nbd on loopback. Peak RSS is `/usr/bin/time`'s maximum resident set size.
#
#   benches/restore-memory.sh [SIZES_GIB="1 8"] [DATA_MIB=512] [RUNS=3]
#
# REHYDRATE_BIN names a built `rehydrate` to measure instead of building this tree's
# (to compare two builds under the same conditions).
#
# Needs qemu-utils (qemu-nbd) and GNU time (/usr/bin/time).
set -euo pipefail

sizes=${1:-"1 8"}
data_mib=${2:-512}
runs=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time is missing (apt-get install -y time)" >&2; exit 1; }
command -v qemu-nbd >/dev/null || { echo "bench: qemu-nbd is missing" >&2; exit 1; }
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
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

first_kib=""
for gib in $sizes; do
    img=$work/image.raw
    rm -f "$img"
    head -c "$((data_mib << 20))" /dev/urandom >"$img"
    truncate -s "${gib}G" "$img"
    p=$(port)
    qemu-nbd --persistent --shared=16 -f raw -b 127.0.0.1 -p "$p" -x bench --read-only "$img" &
    server=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
    peaks=()
    for ((i = 1; i <= runs; i++)); do
        rm -f "$work/out.rh" "$work/out.rh.rehydrate-meta"
        /usr/bin/time -f '%M' -o "$work/rss" "$rehydrate" restore --source "nbd://127.0.0.1:$p/bench" --target "$work/out.rh" >/dev/null
        peaks+=("$(cat "$work/rss")")
    done
    rm -f "$work/out.rh" "$work/out.rh.rehydrate-meta"
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
    kib=$(median "${peaks[@]}")
    map_kib=$((gib * 64))
    first_kib=${first_kib:-$kib}
    first_map_kib=${first_map_kib:-$map_kib}
    printf 'bench: size_gib=%d data_mib=%d runs=%d peak_rss_kib=%d region_maps_kib=%d growth_kib=%d maps_growth_kib=%d\n' \
        "$gib" "$data_mib" "$runs" "$kib" "$map_kib" "$((kib - first_kib))" "$((map_kib - first_map_kib))"
done
