#!/usr/bin/env bash
# Restore through TLS against without: the same volume, served by two `rehydrate serve`
# processes over one store (one plain, one with --tls-cert/--tls-key/--tls-client-ca),
# copied whole by the nbd crate's client (`read-export`, the client `restore` uses) and
# by `qemu-img convert`, runs alternating, medians and ratios printed. Goal: TLS
# throughput at least 0.8x plain (ratio = plain secs / TLS secs).
#
#   benches/restore-tls.sh [RUNS] [SIZE_MIB]          (defaults: 5 runs, 1024 MiB)
#
# Needs openssl (certificates) and qemu-img (qemu-utils). TMPDIR picks where the
# store and copies go.
set -euo pipefail

runs="${1:-5}"
size_mib="${2:-1024}"
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
for tool in openssl qemu-img; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install -y openssl qemu-utils)" >&2; exit 1; }
done
(cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-service --bin rehydrate \
    && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p rehydrate-nbd --example read-export)
rehydrate="$target_dir/release/rehydrate"
reader="$target_dir/release/examples/read-export"


# Certificates: a CA, a server certificate for 127.0.0.1, a client certificate.
certs="$work/certs"
mkdir -p "$certs"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$certs/ca-key.pem" -out "$certs/ca-cert.pem" -days 2 -subj /CN=bench-ca 2>/dev/null
for role in server client; do
    usage=$([ "$role" = server ] && echo serverAuth || echo clientAuth)
    openssl req "${ec[@]}" -keyout "$certs/$role-key.pem" -out "$work/$role.csr" -subj "/CN=bench-$role" 2>/dev/null
    openssl x509 -req -in "$work/$role.csr" -CA "$certs/ca-cert.pem" -CAkey "$certs/ca-key.pem" \
        -CAcreateserial -days 2 -out "$certs/$role-cert.pem" \
        -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' "$usage") 2>/dev/null
done

# The volume: random data with a zero run every 128 MiB (holes in block status).
img="$work/image.raw"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$img"
for ((at = 64; at + 16 <= size_mib; at += 128)); do
    dd if=/dev/zero of="$img" bs=1M seek="$at" count=16 conv=notrunc status=none
done
"$rehydrate" backup "$img" --store "$work/store" --volume bench >/dev/null

plain_port=$(free_port)
"$rehydrate" serve --store "$work/store" --listen "127.0.0.1:$plain_port" --cache-size 2GiB 2>/dev/null &
pids+=($!)
tls_port=$(free_port)
"$rehydrate" serve --store "$work/store" --listen "127.0.0.1:$tls_port" --cache-size 2GiB \
    --tls-cert "$certs/server-cert.pem" --tls-key "$certs/server-key.pem" --tls-client-ca "$certs/ca-cert.pem" 2>/dev/null &
pids+=($!)
wait_port "$plain_port"
wait_port "$tls_port"
export REHYDRATE_TLS_CA="$certs/ca-cert.pem" REHYDRATE_TLS_CERT="$certs/client-cert.pem" REHYDRATE_TLS_KEY="$certs/client-key.pem"
qemu_tls=(--object "tls-creds-x509,id=tls0,dir=$certs,endpoint=client" --image-opts
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$tls_port,export=bench,tls-creds=tls0")

timed() { local t0; t0=$(now); "$@" >/dev/null; since "$t0"; }
# Warm both servers' caches, so every timed run moves the same bytes from memory.
"$reader" "nbd://127.0.0.1:$plain_port/bench" "$work/out" >/dev/null
"$reader" "nbds://127.0.0.1:$tls_port/bench" "$work/out" >/dev/null

ours_plain=(); ours_tls=(); qemu_plain=(); qemu_tls_t=()
for ((i = 1; i <= runs; i++)); do
    ours_plain+=("$(timed "$reader" "nbd://127.0.0.1:$plain_port/bench" "$work/out")")
    cmp -s "$img" "$work/out" || { echo "bench: plain copy differs" >&2; exit 1; }
    ours_tls+=("$(timed "$reader" "nbds://127.0.0.1:$tls_port/bench" "$work/out")")
    cmp -s "$img" "$work/out" || { echo "bench: TLS copy differs" >&2; exit 1; }
    rm -f "$work/q"
    qemu_plain+=("$(timed qemu-img convert -f raw -O raw "nbd://127.0.0.1:$plain_port/bench" "$work/q")")
    rm -f "$work/q"
    qemu_tls_t+=("$(timed qemu-img convert "${qemu_tls[@]}" -O raw "$work/q")")
    cmp -s "$img" "$work/q" || { echo "bench: qemu-img TLS copy differs" >&2; exit 1; }
    printf 'run %d: ours plain %.3fs tls %.3fs   qemu-img plain %.3fs tls %.3fs\n' "$i" \
        "${ours_plain[-1]}" "${ours_tls[-1]}" "${qemu_plain[-1]}" "${qemu_tls_t[-1]}"
done

op=$(median "${ours_plain[@]}"); ot=$(median "${ours_tls[@]}")
qp=$(median "${qemu_plain[@]}"); qt=$(median "${qemu_tls_t[@]}")
printf 'bench: size_mib=%d runs=%d ours_plain_secs=%.3f ours_tls_secs=%.3f ours_tls_ratio=%.2f qemu_img_plain_secs=%.3f qemu_img_tls_secs=%.3f qemu_img_tls_ratio=%.2f\n' \
    "$size_mib" "$runs" "$op" "$ot" "$(echo "$op / $ot" | bc -l)" "$qp" "$qt" "$(echo "$qp / $qt" | bc -l)"
