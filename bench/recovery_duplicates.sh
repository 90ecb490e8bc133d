#!/usr/bin/env bash
# How many QoS 1 messages a persistent session gets again when its node is killed and the
# session is recovered on another node: 3 NATS servers (sync_interval: always, R3) and two
# Tern nodes on free loopback ports; a mosquitto_sub persistent session on node a receives
# 300 messages published on node b over a few seconds; node a is killed (SIGKILL) 1.5 s
# after the last; the client reconnects to node b and the script counts what comes again.
# Everything started here is stopped by PID.
#
#   bench/recovery_duplicates.sh [TERN_BINARY]      (default: target/release/tern)
#
# Needs nats-server 2.11+ and mosquitto-clients (scripts/test installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-${CARGO_TARGET_DIR:-target}/release/tern}"
RUN="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
set +m
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
for i in 1 2 3; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:${HP[$i]}/healthz" | grep -q '"ok"' && break; sleep 0.1; done
done
URLS="nats://127.0.0.1:${CP[1]},nats://127.0.0.1:${CP[2]},nats://127.0.0.1:${CP[3]}"
cat > "$RUN/cluster.toml" <<CONF
sys_interval_secs = 0
[cluster]
monitor = ["http://127.0.0.1:${HP[1]}", "http://127.0.0.1:${HP[2]}", "http://127.0.0.1:${HP[3]}"]
shards = 2
CONF
A=$(free_port); B=$(free_port)
start_tern() { # name port
  "$T" broker --listen "127.0.0.1:$2" --in-memory --no-http --log warn --config "$RUN/cluster.toml" \
    --cluster "$URLS" --node-name "$1" > "$RUN/$1.out" 2> "$RUN/$1.log" & pids+=($!)
  for _ in $(seq 200); do grep -q "listening on" "$RUN/$1.out" 2>/dev/null && return; sleep 0.1; done
  echo "tern $1 did not start"; cat "$RUN/$1.log"; exit 1
}
start_tern a "$A"; A_PID=${pids[${#pids[@]}-1]}
start_tern b "$B"
mosquitto_sub -h 127.0.0.1 -p "$A" -V mqttv5 -c -i rd-sub -x 600 -q 1 -t 'rd/#' > "$RUN/sub.out" 2>&1 & SUB=$!; pids+=($SUB)
sleep 0.5
for j in $(seq 15); do seq 20 | sed "s/^/$j-/" | mosquitto_pub -h 127.0.0.1 -p "$B" -q 1 -t rd/x -l; sleep 0.1; done
sleep 1.5
echo "received on node a: $(wc -l < "$RUN/sub.out")"
kill -9 "$A_PID"; wait "$A_PID" 2>/dev/null || true
kill "$SUB" 2>/dev/null || true
sleep 0.3
timeout 15 mosquitto_sub -h 127.0.0.1 -p "$B" -V mqttv5 -c -i rd-sub -x 600 -q 1 -t 'rd/#' -W 12 > "$RUN/again.out" 2>/dev/null || true
echo "received again after the recovery on node b: $(grep -c . "$RUN/again.out" || true)"
