#!/usr/bin/env bash
# A cluster node restarted from its own store (--data-dir) with many persistent sessions: N
# sessions made on node a (`tern bench -s move` on the same node: CONNECT, SUBSCRIBE, DISCONNECT,
# then reconnected once), node a killed with SIGKILL, restarted; prints the seconds until it
# listens again (it reconciles every stored session with the session directory first).
# 3 local NATS servers (sync_interval: always, R3), loopback only, stopped by PID at the end.
#
#   bench/cluster-restart.sh [N]     (release build: cargo build --release -p tern; TERN=path)
set -euo pipefail
cd "$(dirname "$0")/.."
TERN="${TERN:-${CARGO_TARGET_DIR:-target}/release/tern}"
N="${1:-10000}"
RUN="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a CP HP RP
for i in 1 2 3; do CP[$i]=$(free_port); HP[$i]=$(free_port); RP[$i]=$(free_port); done
routes="nats-route://127.0.0.1:${RP[1]}, nats-route://127.0.0.1:${RP[2]}, nats-route://127.0.0.1:${RP[3]}"
for i in 1 2 3; do
  cat > "$RUN/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${CP[$i]}
http: 127.0.0.1:${HP[$i]}
jetstream { store_dir: "$RUN/n$i", sync_interval: always }
cluster { name: tern, listen: 127.0.0.1:${RP[$i]}, routes: [$routes] }
CONF
  nats-server -c "$RUN/n$i.conf" > "$RUN/n$i.log" 2>&1 & pids+=($!)
done
for i in 1 2 3; do for _ in $(seq 100); do curl -fs "http://127.0.0.1:${HP[$i]}/healthz" | grep -q '"ok"' && break; sleep 0.1; done; done
URLS="nats://127.0.0.1:${CP[1]},nats://127.0.0.1:${CP[2]},nats://127.0.0.1:${CP[3]}"
printf 'sys_interval_secs = 0\n[cluster]\nmonitor = ["http://127.0.0.1:%s", "http://127.0.0.1:%s", "http://127.0.0.1:%s"]\n' ${HP[1]} ${HP[2]} ${HP[3]} > "$RUN/c.toml"
A=$(free_port)
start() {
  "$TERN" broker --listen "127.0.0.1:$A" --data-dir "$RUN/data" --no-http --log warn --config "$RUN/c.toml" --cluster "$URLS" --node-name a > "$RUN/a.out" 2>>"$RUN/a.log" & pids+=($!)
  for _ in $(seq 3000); do grep -q "listening on" "$RUN/a.out" 2>/dev/null && return; sleep 0.02; done
  echo "no start"; tail "$RUN/a.log"; exit 1
}
start; A_PID=${pids[${#pids[@]}-1]}
"$TERN" bench --quiet -p "$A" --sub-port "$A" -s move --connections "$N" -V 5 2>&1 | grep -E "^result" | sed 's/^/made: /'
kill -9 $A_PID; wait $A_PID 2>/dev/null || true
t0=$(date +%s.%N); start; t1=$(date +%s.%N)
echo "restart with $N stored sessions: $(python3 -c "print(round($t1-$t0,2))") s to listening"
