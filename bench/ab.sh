#!/usr/bin/env bash
# A/B throughput of two tern binaries (e.g. main's and a branch's) on compare.sh's
# scenarios, each broker started once, in memory. Runs alternate A B, then B A in the
# next round (so that drift and other load on the machine hit both alike), and the
# table gives per scenario the median delivered rate of each, B/A, and each broker's
# CPU seconds per million delivered (from /proc/PID/stat). The load generator is
# B's `tern bench` for both.
#
#   bench/ab.sh A_BINARY B_BINARY [ROUNDS=5] [SECONDS=5]
#   PROTOCOL=5 bench/ab.sh ...        MQTT 5.0 instead of 3.1.1
#   ONLY=fan-out bench/ab.sh ...      only the scenarios whose name matches (grep -E)
set -euo pipefail
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS=${3:-5}
SECS=${4:-5}
PROTOCOL=${PROTOCOL:-311}
ONLY=${ONLY:-.}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
HZ=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

declare -A BIN PORT PID
BIN[a]=$A
BIN[b]=$B
for x in a b; do
  PORT[$x]=$(free_port)
  "${BIN[$x]}" broker --in-memory --listen "127.0.0.1:${PORT[$x]}" --log warn >"$WORK/$x.log" 2>&1 &
  PID[$x]=$!
  PIDS+=("${PID[$x]}")
done
sleep 1

SCENARIOS=(
  "fan-in-qos0|--scenario fan-in --publishers 8 --qos 0"
  "fan-in-qos1|--scenario fan-in --publishers 8 --qos 1"
  "fan-out-qos0|--scenario fan-out --subscribers 32 --qos 0"
  "fan-out-qos1|--scenario fan-out --subscribers 32 --qos 1"
  "pairs-qos1|--scenario pairs --pairs 16 --qos 1"
  "latency-qos1|--scenario latency --rate 5000 --qos 1"
)

# Until both brokers are idle (at most 30 s).
settle() {
  for _ in $(seq 60); do
    local t0a t0b
    t0a=$(cpu_ticks "${PID[a]}")
    t0b=$(cpu_ticks "${PID[b]}")
    sleep 0.2
    if [ $(($(cpu_ticks "${PID[a]}") - t0a + $(cpu_ticks "${PID[b]}") - t0b)) -le 1 ]; then return 0; fi
    sleep 0.3
  done
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order="a b"
  if [ $((round % 2)) = 0 ]; then order="b a"; fi
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}
    args=${s#*|}
    grep -qE "$ONLY" <<<"$name" || continue
    for x in $order; do
      settle
      before=$(cpu_ticks "${PID[$x]}")
      # shellcheck disable=SC2086 # $args is a list of arguments
      line=$(timeout 600 "$B" bench --port "${PORT[$x]}" -V "$PROTOCOL" --duration "$SECS" --quiet $args | grep '^result' || echo "result failed")
      after=$(cpu_ticks "${PID[$x]}")
      field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$x" "$(field rate)" "$(field received)" \
        "$(python3 -c "print(($after-$before)/$HZ)")" "$(field p99_us)" >>"$RESULTS"
      echo "round $round $name $x: $line" >&2
    done
  done
done

python3 - "$RESULTS" "$PROTOCOL" "$A" "$B" <<'PY'
import collections, statistics, sys
path, protocol, a, b = sys.argv[1:]
runs = collections.defaultdict(list)
names = []
for line in open(path):
    name, x, rate, received, cpu, p99 = line.rstrip("\n").split("\t")
    f = lambda v: float(v) if v else 0.0
    runs[(name, x)].append((f(rate), f(received), f(cpu), f(p99)))
    if name not in names:
        names.append(name)
print(f"MQTT {'5.0' if protocol == '5' else '3.1.1'}; A = {a}; B = {b}")
print("medians; rate = delivered msg/s; cpu = broker CPU s per million delivered; runs per cell:",
      len(runs[(names[0], 'a')]) if names else 0)
print(f"{'scenario':14}{'A msg/s':>12}{'B msg/s':>12}{'B/A':>7}{'A cpu':>8}{'B cpu':>8}{'A p99':>8}{'B p99':>8}")
for n in names:
    ra = statistics.median(r[0] for r in runs[(n, 'a')])
    rb = statistics.median(r[0] for r in runs[(n, 'b')])
    cpu = lambda x: statistics.median(r[2] / max(r[1], 1) * 1e6 for r in runs[(n, x)])
    p99 = lambda x: statistics.median(r[3] for r in runs[(n, x)])
    print(f"{n:14}{ra:12.0f}{rb:12.0f}{rb / max(ra, 1):7.2f}{cpu('a'):8.2f}{cpu('b'):8.2f}{p99('a'):8.0f}{p99('b'):8.0f}")
PY
