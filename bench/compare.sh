#!/usr/bin/env bash
# Runs the same load against Tern, Mosquitto and (when installed) rumqttd, in turn
# (A B C A B C ...), and prints per scenario the median delivered rate of each, the
# ratios Tern/Mosquitto and Tern/rumqttd, and each broker's CPU seconds per million
# delivered messages (from /proc/PID/stat, so the load generator's own cost does
# not count). Then a connection storm against a freshly started broker of each kind:
# connects per second and broker memory per idle connection.
#
#   bench/compare.sh [ROUNDS=3] [SECONDS=5]       results also go to bench/results.txt
#   PROTOCOL=5 bench/compare.sh                   MQTT 5.0 instead of 3.1.1
#   CONNECTIONS=15000 bench/compare.sh            size of the connection storm (0: skip it)
#   ONLY=latency bench/compare.sh                 only the scenarios whose name matches (grep -E)
#
# Needs: mosquitto (Debian package) and a release build of tern (built here).
# rumqttd is used when `rumqttd` is on PATH or RUMQTTD names it
# (`cargo install rumqttd --root /tmp/rumqttd` builds it from crates.io); it is
# run with its own default limits, written to its config file below.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
PROTOCOL=${PROTOCOL:-311}
ONLY=${ONLY:-.}
CONNECTIONS=${CONNECTIONS:-15000}
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || true)}
cargo build --release -j2 -p tern >/dev/null
TERN=$PWD/target/release/tern
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "broker on port $1 did not start" >&2
  return 1
}

# start_broker NAME PORT: starts it in the background and sets BROKER_PID.
start_broker() {
  local name=$1 port=$2
  case $name in
    tern)
      $TERN broker --in-memory --listen "127.0.0.1:$port" --log warn >"$WORK/tern-$port.log" 2>&1 &
      ;;
    mosquitto)
      cat >"$WORK/mosquitto-$port.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 1000
max_connections -1
persistence false
log_type error
CONF
      mosquitto -c "$WORK/mosquitto-$port.conf" >"$WORK/mosquitto-$port.log" 2>&1 &
      ;;
    rumqttd)
      # rumqttd's generated defaults, on loopback; one listener per protocol version.
      local section=v4
      if [ "$PROTOCOL" = 5 ]; then section=v5; fi
      cat >"$WORK/rumqttd-$port.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[$section.1]
name = "$section-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 1
    [$section.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
CONF
      "$RUMQTTD" -q -c "$WORK/rumqttd-$port.toml" >"$WORK/rumqttd-$port.log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  wait_port "$port"
}

BROKERS=(tern mosquitto)
if [ -n "$RUMQTTD" ]; then BROKERS+=(rumqttd); else echo "rumqttd not found: comparing with Mosquitto only" >&2; fi
declare -A PORT PID
for b in "${BROKERS[@]}"; do
  PORT[$b]=$(free_port)
  start_broker "$b" "${PORT[$b]}"
  PID[$b]=$BROKER_PID
done

# name | tern bench arguments
SCENARIOS=(
  "fan-in-qos0|--scenario fan-in --publishers 8 --qos 0"
  "fan-in-qos1|--scenario fan-in --publishers 8 --qos 1"
  "fan-out-qos0|--scenario fan-out --subscribers 32 --qos 0"
  "fan-out-qos1|--scenario fan-out --subscribers 32 --qos 1"
  "pairs-qos1|--scenario pairs --pairs 16 --qos 1"
  "latency-qos1|--scenario latency --rate 5000 --qos 1"
)

# Wait (up to 60 s) until every broker is idle: one still working off the last
# scenario (rumqttd delivers its backlog long after the publishers stop) would
# disturb the next run, whichever broker it measures.
settle() {
  for _ in $(seq 120); do
    local busy=0 t0 t1
    for b in "${BROKERS[@]}"; do
      t0=$(cpu_ticks "${PID[$b]}")
      sleep 0.1
      t1=$(cpu_ticks "${PID[$b]}")
      if [ $((t1 - t0)) -gt 1 ]; then busy=1; fi
    done
    [ $busy = 0 ] && return 0
    sleep 0.3
  done
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}
    args=${s#*|}
    grep -qE "$ONLY" <<<"$name" || continue
    for broker in "${BROKERS[@]}"; do
      port=${PORT[$broker]}
      pid=${PID[$broker]}
      settle
      before=$(cpu_ticks "$pid")
      # shellcheck disable=SC2086 # $args is a list of arguments
      line=$(timeout 600 $TERN bench --port "$port" -V "$PROTOCOL" --duration "$SECS" --quiet $args | grep '^result' || echo "result failed")
      after=$(cpu_ticks "$pid")
      field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
      cpu=$(python3 -c "print(($after-$before)/$HZ)")
      printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$broker" "$(field rate)" "$(field received)" \
        "$(field lost)" "$cpu" "$(field p99_us)" "$(field p999_us)" >>"$RESULTS"
      echo "round $round $name $broker: $line cpu_s=$cpu" >&2
    done
  done
done

# The connection storm, once per broker, each freshly started (memory is read from its RSS).
if [ "$CONNECTIONS" -gt 0 ]; then
  for broker in "${BROKERS[@]}"; do
    port=$(free_port)
    start_broker "$broker" "$port"
    line=$(timeout 600 $TERN bench --port "$port" -V "$PROTOCOL" --scenario conn --connections "$CONNECTIONS" \
      --broker-pid "$BROKER_PID" | grep '^result' || echo "result failed")
    kill "$BROKER_PID" 2>/dev/null || true
    field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
    printf 'conn\t%s\t%s\t%s\t%s\t%s\n' "$broker" "$(field connections)" "$(field rate)" \
      "$(field broker_bytes_per_connection)" "$(field failed)" >>"$RESULTS"
    echo "conn $broker: $line" >&2
  done
fi

python3 - "$RESULTS" "$PROTOCOL" "${BROKERS[@]}" <<'PY' | tee bench/results.txt
import collections, statistics, sys
path, protocol, brokers = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = collections.defaultdict(list)
conns = {}
names = []
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[0] == "run":
        name, broker = f[1], f[2]
        num = lambda x, t=float: t(x) if x else t(0)
        runs[(name, broker)].append((num(f[3]), num(f[4], int), num(f[5], int), num(f[6]), num(f[7], int), num(f[8], int)))
        if name not in names:
            names.append(name)
    elif f[0] == "conn":
        conns[f[1]] = f[2:]
med = lambda xs, i: statistics.median(x[i] for x in xs) if xs else 0
cpu = lambda xs: statistics.median(x[3] / max(x[1], 1) * 1e6 for x in xs) if xs else 0
short = {"tern": "tern", "mosquitto": "mosq", "rumqttd": "rumq"}
others = [b for b in brokers if b != "tern"]
print(f"MQTT {'5.0' if protocol == '5' else '3.1.1'}; medians; rate = delivered msg/s; cpu = broker CPU s per million delivered")
head = f"{'scenario':14}" + "".join(f"{short[b] + ' msg/s':>12}" for b in brokers)
head += "".join(f"{'t/' + short[b]:>7}" for b in others)
head += "".join(f"{short[b] + ' cpu':>9}" for b in brokers)
head += f"  {'lost ' + '/'.join(short[b][0] for b in brokers):>14}  {'p99 us':>16}  {'p99.9 us':>16}"
print(head)
for n in names:
    rate = {b: med(runs[(n, b)], 0) for b in brokers}
    row = f"{n:14}" + "".join(f"{rate[b]:12.0f}" for b in brokers)
    row += "".join(f"{rate['tern'] / max(rate[b], 1):7.2f}" for b in others)
    row += "".join(f"{cpu(runs[(n, b)]):9.2f}" for b in brokers)
    row += "  " + f"{'/'.join(str(int(med(runs[(n, b)], 2))) for b in brokers):>14}"
    row += "  " + f"{'/'.join(str(int(med(runs[(n, b)], 4))) for b in brokers):>16}"
    row += "  " + f"{'/'.join(str(int(med(runs[(n, b)], 5))) for b in brokers):>16}"
    print(row)
if conns:
    print()
    print(f"{'connection storm':18}{'connections':>12}{'failed':>8}{'connects/s':>12}{'bytes/conn':>12}")
    for b in brokers:
        if b in conns:
            c = conns[b]
            print(f"{b:18}{c[0]:>12}{c[3]:>8}{c[1]:>12}{c[2]:>12}")
PY
