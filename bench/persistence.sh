#!/usr/bin/env bash
# Persistence benchmark: QoS 1 throughput to persistent sessions on
#   tern (sync = "always", group commit) | tern (sync = "interval") | tern (in memory) | mosquitto (persistence on)
# alternately in one run, then Tern's start-up time with QUEUED messages queued for an offline session.
#
#   bench/persistence.sh [ROUNDS=3] [SECONDS=5] [QUEUED=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
QUEUED=${3:-1000000}
cargo build --release -j2 -p tern >/dev/null
TERN=target/release/tern
WORK=$(mktemp -d)
PIDS=()
trap 'kill ${PIDS[*]} $(cat "$WORK/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_tern() { # name config-lines...
  local name=$1; shift
  local port; port=$(free_port)
  printf '%s\n' "listen = [\"127.0.0.1:$port\"]" "sys_interval_secs = 0" "$@" >"$WORK/$name.toml"
  # No data_dir in the config means in memory here (the binary would otherwise use ./tern-data).
  local mem=""; grep -q '^data_dir' "$WORK/$name.toml" || mem="--in-memory"
  $TERN broker --config "$WORK/$name.toml" $mem --log warn >"$WORK/$name.out" 2>"$WORK/$name.err" &
  echo $! >>"$WORK/pids"   # called in $(...): a subshell, so PIDS would not see it
  echo "$port"
}

declare -A PORT
PORT[tern-always]=$(start_tern tern-always "data_dir = \"$WORK/always\"" 'sync = "always"')
PORT[tern-interval]=$(start_tern tern-interval "data_dir = \"$WORK/interval\"" 'sync = "interval"')
PORT[tern-memory]=$(start_tern tern-memory)
PORT[mosquitto]=$(free_port)
cat >"$WORK/mosquitto.conf" <<CONF
listener ${PORT[mosquitto]} 127.0.0.1
allow_anonymous true
persistence true
persistence_location $WORK/
max_inflight_messages 100
max_queued_messages 1000
log_type error
CONF
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosq.log" 2>&1 &
PIDS+=($!)
sleep 1

SCENARIOS=(
  "fan-in-qos1|--scenario fan-in --publishers 8 --qos 1 --persistent"
  "pairs-qos1|--scenario pairs --pairs 16 --qos 1 --persistent"
)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}; args=${s#*|}
    for broker in tern-always tern-interval tern-memory mosquitto; do
      line=$($TERN bench --port "${PORT[$broker]}" --duration "$SECS" --quiet $args | grep '^result')
      rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$line")
      lost=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$line")
      printf '%s\t%s\t%s\t%s\n' "$name" "$broker" "$rate" "$lost" >>"$RESULTS"
      echo "round $round $name $broker: $line" >&2
    done
  done
done
python3 - "$RESULTS" <<'PY'
import statistics, sys, collections
by = collections.defaultdict(list)
for l in open(sys.argv[1]):
    n, b, r, lost = l.split("\t")
    by[(n, b)].append(float(r))
names = list(dict.fromkeys(k[0] for k in by))
brokers = ["tern-always", "tern-interval", "tern-memory", "mosquitto"]
print("QoS 1 deliveries/s to persistent sessions (median of runs):")
print(f"{'scenario':12} " + " ".join(f"{b:>14}" for b in brokers))
for n in names:
    print(f"{n:12} " + " ".join(f"{statistics.median(by[(n, b)]):14.0f}" for b in brokers))
PY

# Start-up with QUEUED messages queued for one offline session.
RPORT=$(free_port)
cat >"$WORK/recovery.toml" <<CONF
listen = ["127.0.0.1:$RPORT"]
data_dir = "$WORK/recovery"
sys_interval_secs = 0
max_queued_messages = $((QUEUED * 2))
max_queued_bytes = 4294967296
CONF
$TERN broker --config "$WORK/recovery.toml" --log warn >/dev/null 2>&1 &
RPID=$!; PIDS+=($RPID)
sleep 0.5
$TERN sub -p "$RPORT" -V 5 -c -x 86400 -i offline-device -t 'bench/#' -q 1 -W 1 >/dev/null 2>&1 || true
$TERN bench --port "$RPORT" --scenario fan-in --publishers 4 --count $((QUEUED / 4)) --qos 1 --quiet | grep '^result' >&2
kill -9 $RPID; wait $RPID 2>/dev/null || true
du -sh "$WORK/recovery" >&2
start=$(date +%s.%N)
$TERN broker --config "$WORK/recovery.toml" --log info >"$WORK/recovery.out" 2>"$WORK/recovery.err" &
RPID=$!; PIDS+=($RPID)
while ! grep -q listening "$WORK/recovery.out" 2>/dev/null; do sleep 0.01; done
end=$(date +%s.%N)
grep -o 'messages=[0-9]*.*elapsed=[^ ]*' "$WORK/recovery.err" | sed 's/\x1b\[[0-9;]*m//g' || true
python3 -c "print(f'start-up after kill -9 with $QUEUED queued messages: {$end - $start:.2f} s (process start to listening)')"
