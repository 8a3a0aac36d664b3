#!/usr/bin/env bash
# Restore with the store on an S3 server against the same store in a local directory:
# one image backed up into both, each served by `rehydrate serve`, restored whole by
# `rehydrate restore`, runs alternating, each restore from a freshly started server (a
# cold chunk cache). Then where the time goes: the same restore from a warm cache (no
# store reads at all), and the store reads alone (every chunk fetched with curl, 8 at
# once, as the server's fetches are).
#
#   benches/restore-s3-vs-local.sh [RUNS] [SIZE_MIB]    (defaults: 3 runs, 512 MiB)
#
# The S3 server is moto (PyPI `moto[server]`), found by REHYDRATE_MOTO_SERVER or on
# PATH, on loopback (the store reads alone are timed with the boto3 of its virtualenv).
# Needs curl.
set -euo pipefail

runs="${1:-3}"
size_mib="${2:-512}"
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
moto="${REHYDRATE_MOTO_SERVER:-$(command -v moto_server || true)}"
[ -x "$moto" ] || { echo "bench: moto_server missing: python3 -m venv /opt/rehydrate-s3 && /opt/rehydrate-s3/bin/pip install 'moto[server]'" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench: curl is missing" >&2; exit 1; }
(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-service --bin rehydrate)
rehydrate="$target_dir/release/rehydrate"



s3_port=$(free_port)
"$moto" -H 127.0.0.1 -p "$s3_port" >/dev/null 2>&1 &
pids+=($!)
wait_port "$s3_port"
curl -sf -X PUT "http://127.0.0.1:$s3_port/bench" >/dev/null
export AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench

img="$work/image.raw"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$img"
for ((at = 64; at + 16 <= size_mib; at += 128)); do
    dd if=/dev/zero of="$img" bs=1M seek="$at" count=16 conv=notrunc status=none
done
t0=$(now); "$rehydrate" backup "$img" --store "$work/store" --volume bench >/dev/null; backup_local=$(since "$t0")
t0=$(now); "$rehydrate" backup "$img" --store s3://bench/fleet --volume bench >/dev/null; backup_s3=$(since "$t0")

# restore_from STORE: a fresh server on STORE, one timed restore (then a second, warm,
# timed into WARM_SECS), the server stopped.
restore_from() {
    local port pid t0
    port=$(free_port)
    "$rehydrate" serve --store "$1" --listen "127.0.0.1:$port" --cache-size 2GiB 2>/dev/null &
    pid=$!
    wait_port "$port"
    rm -f "$work/out" "$work/out.rehydrate-meta"
    t0=$(now)
    "$rehydrate" restore --source "nbd://127.0.0.1:$port/bench" --target "$work/out" >/dev/null
    COLD_SECS=$(since "$t0")
    cmp -s "$img" "$work/out" || { echo "bench: restore from $1 differs" >&2; kill "$pid"; exit 1; }
    rm -f "$work/out" "$work/out.rehydrate-meta"
    t0=$(now)
    "$rehydrate" restore --source "nbd://127.0.0.1:$port/bench" --target "$work/out" >/dev/null
    WARM_SECS=$(since "$t0")
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

local_cold=(); s3_cold=(); local_warm=(); s3_warm=()
for ((i = 1; i <= runs; i++)); do
    restore_from "$work/store"; local_cold+=("$COLD_SECS"); local_warm+=("$WARM_SECS")
    restore_from s3://bench/fleet; s3_cold+=("$COLD_SECS"); s3_warm+=("$WARM_SECS")
    printf 'run %d: local cold %.3fs warm %.3fs   s3 cold %.3fs warm %.3fs\n' "$i" \
        "${local_cold[-1]}" "${local_warm[-1]}" "${s3_cold[-1]}" "${s3_warm[-1]}"
done

# The store reads alone: GET every chunk object, 8 at once, with boto3 (moto's
# virtualenv has it): signed requests, as the server's are.
py="$(dirname "$moto")/python"
chunks=$("$py" - "$s3_port" <<'PY'
import sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="bench", aws_secret_access_key="bench")
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="fleet/chunks/")
        for o in page.get("Contents", [])]
t0 = time.time()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda k: s3.get_object(Bucket="bench", Key=k)["Body"].read(), keys))
print(len(keys), time.time() - t0)
PY
)
s3_gets=${chunks#* }
chunks=${chunks%% *}
t0=$(now)
find "$work/store/chunks" -type f -print0 | xargs -0 -P 8 cat > /dev/null
local_reads=$(since "$t0")

lc=$(median "${local_cold[@]}"); sc=$(median "${s3_cold[@]}")
lw=$(median "${local_warm[@]}"); sw=$(median "${s3_warm[@]}")
printf 'bench: size_mib=%d runs=%d chunks=%d backup_local_secs=%.3f backup_s3_secs=%.3f\n' \
    "$size_mib" "$runs" "$chunks" "$backup_local" "$backup_s3"
printf 'bench: restore_local_secs=%.3f restore_s3_secs=%.3f s3_over_local=%.2f warm_local_secs=%.3f warm_s3_secs=%.3f s3_get_all_chunks_secs=%.3f local_read_all_chunks_secs=%.3f\n' \
    "$lc" "$sc" "$(echo "$sc / $lc" | bc -l)" "$lw" "$sw" "$s3_gets" "$local_reads"
