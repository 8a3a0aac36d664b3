# Helpers the benchmark scripts source: a scratch directory `$work` removed on exit
# with the processes in `pids`, ports, timing, medians.

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A loopback port that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Wait (at most 20 s) until something listens on loopback port $1.
wait_port() {
    for _ in $(seq 400); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.05
    done
    echo "bench: nothing listens on port $1" >&2
    exit 1
}
# bash's own clock: a `date` process on each side would add its start-up to every figure.
now() { echo "$EPOCHREALTIME"; }
# Seconds since the time $1 (from `now`).
since() { echo "$(now) - $1" | bc -l; }
# The median of the arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
