#!/usr/bin/env bash
# A/B(/C...) of tern builds on the same load: each variant is a `tern` binary, optionally with
# environment variables (e.g. an allocator setting), all started at once and measured in turn,
# the order rotated every round so that other load on the machine hits every variant alike. One
# generator binary drives every run (GEN, default the first variant's), so only the broker differs.
#
#   bench/ab.sh ROUNDS SECONDS NAME=BINARY [NAME=BINARY ...]
#   ENV_NAME="VAR=value ..."      environment of variant NAME (e.g. ENV_je="_RJEM_MALLOC_CONF=...")
#   CONNECTIONS=15000             size of the idle-connection storm per variant (0: skip it)
#   ONLY=qos1                     only the scenarios whose name matches (grep -E)
#   PROTOCOL=5                    MQTT 5.0 instead of 3.1.1
#   DURABLE=1                     brokers with a data directory (sync = "always") instead of --in-memory
#
# Prints per scenario the median delivered msg/s of each variant and its ratio to the first, and
# the broker's CPU seconds per million delivered messages (from /proc, the generator not counted);
# per variant the broker's bytes per idle connection (median over ROUNDS fresh brokers).
set -euo pipefail
ROUNDS=$1
SECS=$2
shift 2
NAMES=()
declare -A BIN
for v in "$@"; do
  NAMES+=("${v%%=*}")
  BIN[${v%%=*}]=${v#*=}
done
GEN=${GEN:-${BIN[${NAMES[0]}]}}
ONLY=${ONLY:-.}
PROTOCOL=${PROTOCOL:-311}
CONNECTIONS=${CONNECTIONS:-15000}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "broker on port $1 did not start" >&2
  return 1
}
# start NAME PORT: sets STARTED_PID.
start() {
  local envname="ENV_$1"
  # shellcheck disable=SC2086 # the variant's environment is a list of assignments
  local store=(--in-memory)
  if [ -n "${DURABLE:-}" ]; then store=(--data-dir "$WORK/data-$1-$2"); fi
  env ${!envname:-} "${BIN[$1]}" broker "${store[@]}" --listen "127.0.0.1:$2" --log warn >"$WORK/$1-$2.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  wait_port "$2"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
settle() {
  for _ in $(seq 60); do
    local busy=0 t0 t1 n
    for n in "${NAMES[@]}"; do
      t0=$(cpu_ticks "${PID[$n]}"); sleep 0.1; t1=$(cpu_ticks "${PID[$n]}")
      if [ $((t1 - t0)) -gt 1 ]; then busy=1; fi
    done
    [ $busy = 0 ] && return 0
  done
}

declare -A PORT PID
for n in "${NAMES[@]}"; do
  PORT[$n]=$(free_port)
  start "$n" "${PORT[$n]}"
  PID[$n]=$STARTED_PID
done

SCENARIOS=(
  "fan-in-qos0|--scenario fan-in --publishers 8 --qos 0"
  "fan-in-qos1|--scenario fan-in --publishers 8 --qos 1"
  "fan-out-qos0|--scenario fan-out --subscribers 32 --qos 0"
  "fan-out-qos1|--scenario fan-out --subscribers 32 --qos 1"
  "pairs-qos1|--scenario pairs --pairs 16 --qos 1"
)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order: A B C, B C A, C A B, ...
  order=("${NAMES[@]:$(((round - 1) % ${#NAMES[@]}))}" "${NAMES[@]:0:$(((round - 1) % ${#NAMES[@]}))}")
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}
    args=${s#*|}
    grep -qE "$ONLY" <<<"$name" || continue
    for n in "${order[@]}"; do
      settle
      before=$(cpu_ticks "${PID[$n]}")
      # shellcheck disable=SC2086 # $args is a list of arguments
      line=$(timeout 300 "$GEN" bench --port "${PORT[$n]}" -V "$PROTOCOL" --duration "$SECS" --quiet $args | grep '^result' || echo "result failed")
      after=$(cpu_ticks "${PID[$n]}")
      rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$line")
      received=$(sed -n 's/.* received=\([0-9]*\).*/\1/p' <<<"$line")
      printf 'run\t%s\t%s\t%s\t%s\t%s\n' "$name" "$n" "${rate:-0}" "${received:-0}" "$((after - before))" >>"$RESULTS"
      echo "round $round $name $n: $line" >&2
    done
  done
  if [ "$CONNECTIONS" -gt 0 ]; then
    for n in "${order[@]}"; do
      port=$(free_port)
      start "$n" "$port"
      line=$(timeout 300 "$GEN" bench --port "$port" -V "$PROTOCOL" --scenario conn --connections "$CONNECTIONS" \
        --broker-pid "$STARTED_PID" | grep '^result' || echo "result failed")
      kill "$STARTED_PID" 2>/dev/null || true
      wait "$STARTED_PID" 2>/dev/null || true
      per=$(sed -n 's/.* broker_bytes_per_connection=\([0-9.]*\).*/\1/p' <<<"$line")
      printf 'conn\t%s\t%s\n' "$n" "${per:-0}" >>"$RESULTS"
      echo "round $round conn $n: $line" >&2
    done
  fi
done

python3 - "$RESULTS" "$(getconf CLK_TCK)" "${NAMES[@]}" <<'PY'
import collections, statistics, sys
path, hz, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
runs, cpu, conns, scen = collections.defaultdict(list), collections.defaultdict(list), collections.defaultdict(list), []
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[0] == "run":
        runs[(f[1], f[2])].append(float(f[3]))
        cpu[(f[1], f[2])].append(float(f[5]) / hz / max(float(f[4]), 1) * 1e6)
        if f[1] not in scen:
            scen.append(f[1])
    else:
        conns[f[1]].append(float(f[2]))
print("medians of delivered msg/s (ratio to " + names[0] + "), all runs in brackets; then broker CPU s per million delivered")
for s in scen:
    base = statistics.median(runs[(s, names[0])]) or 1
    cells = []
    for n in names:
        m = statistics.median(runs[(s, n)])
        cells.append(f"{n} {m:.0f} ({m / base:.2f}) [{' '.join(f'{x / 1e3:.0f}k' for x in runs[(s, n)])}]")
    cells.append("cpu " + " ".join(f"{n} {statistics.median(cpu[(s, n)]):.2f}" for n in names))
    print(f"{s:14} " + "  ".join(cells))
if conns:
    print("bytes per idle connection: " + "  ".join(
        f"{n} {statistics.median(conns[n]):.0f} [{' '.join(f'{x:.0f}' for x in conns[n])}]" for n in names))
PY
