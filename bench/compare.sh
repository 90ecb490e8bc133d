#!/usr/bin/env bash
# Runs the same load against Tern and Mosquitto, alternately (A B A B ...), and
# prints the median delivered rate of each, the ratio Tern/Mosquitto, and each
# broker's CPU seconds per million delivered messages (from /proc/PID/stat, so
# the load generator's own cost does not count).
#
#   bench/compare.sh [ROUNDS=3] [SECONDS=5]        results also go to bench/results.txt
#
# Needs: mosquitto (Debian package), a release build of tern (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
cargo build --release -j2 -p tern >/dev/null
TERN=target/release/tern
WORK=$(mktemp -d)
trap 'kill $TERN_PID $MOSQ_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

TERN_PORT=$(free_port)
MOSQ_PORT=$(free_port)
$TERN broker --in-memory --listen 127.0.0.1:$TERN_PORT --log warn >"$WORK/tern.out" 2>"$WORK/tern.err" &
TERN_PID=$!
cat >"$WORK/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 1000
persistence false
log_type error
CONF
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosq.log" 2>&1 &
MOSQ_PID=$!
sleep 1

# name | tern bench arguments
SCENARIOS=(
  "fan-in-qos0|--scenario fan-in --publishers 8 --qos 0"
  "fan-in-qos1|--scenario fan-in --publishers 8 --qos 1"
  "fan-out-qos0|--scenario fan-out --subscribers 32 --qos 0"
  "fan-out-qos1|--scenario fan-out --subscribers 32 --qos 1"
  "pairs-qos1|--scenario pairs --pairs 16 --qos 1"
  "latency-qos1|--scenario latency --rate 5000 --qos 1"
)

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}
    args=${s#*|}
    for broker in tern mosquitto; do
      if [ $broker = tern ]; then port=$TERN_PORT; pid=$TERN_PID; else port=$MOSQ_PORT; pid=$MOSQ_PID; fi
      before=$(cpu_ticks $pid)
      line=$($TERN bench --port $port --duration "$SECS" --quiet $args | grep '^result')
      after=$(cpu_ticks $pid)
      rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$line")
      received=$(sed -n 's/.* received=\([0-9]*\).*/\1/p' <<<"$line")
      lost=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$line")
      p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
      p999=$(sed -n 's/.* p999_us=\([0-9]*\).*/\1/p' <<<"$line")
      cpu=$(python3 -c "print(($after-$before)/$HZ)")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$broker" "$rate" "$received" "$lost" "$cpu" "$p99" "$p999" >>"$RESULTS"
      echo "round $round $name $broker: $line cpu_s=$cpu" >&2
    done
  done
done

python3 - "$RESULTS" <<'PY' | tee bench/results.txt
import statistics, sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for name, broker, rate, received, lost, cpu, p99, p999 in rows:
    by[(name, broker)].append((float(rate), int(received), int(lost), float(cpu), int(p99 or 0), int(p999 or 0)))
names = list(dict.fromkeys(r[0] for r in rows))
print(f"{'scenario':14} {'tern msg/s':>12} {'mosquitto':>12} {'ratio':>6} {'tern cpu s/M':>13} {'mosq cpu s/M':>13} {'cpu ratio':>9} {'lost t/m':>9} {'p99 us t/m':>12} {'p99.9 t/m':>12}")
for n in names:
    t, m = by[(n, "tern")], by[(n, "mosquitto")]
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    cpu_per_m = lambda xs: statistics.median(x[3] / max(x[1], 1) * 1e6 for x in xs)
    tr, mr = med(t, 0), med(m, 0)
    tc, mc = cpu_per_m(t), cpu_per_m(m)
    print(f"{n:14} {tr:12.0f} {mr:12.0f} {tr/max(mr,1):6.2f} {tc:13.2f} {mc:13.2f} {tc/max(mc,1e-9):9.2f} {int(med(t,2)):4}/{int(med(m,2)):<4} {int(med(t,4)):5}/{int(med(m,4)):<6} {int(med(t,5)):5}/{int(med(m,5)):<6}")
PY
