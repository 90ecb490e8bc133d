#!/usr/bin/env bash
# Throughput of one bridge: `tern bench` publishers on broker A, subscribers on broker B,
# messages carried from A to B by A's bridge (QoS 1, remote on loopback). For each store
# setting (in memory; a data directory with sync = "always") and each version of the remote:
# one fan-in run of DURATION seconds, then the same run with publishers and subscribers
# on B alone (no bridge) for reference.
#
#   bench/bridge.sh [DURATION]      (default 5)
#   MAX_INFLIGHT=1000 bench/bridge.sh   the bridge's max_inflight (default 100)
#
# Needs a release build of tern: TERN=path/to/tern, or target/release/tern.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5}"
TERN="${TERN:-$PWD/target/release/tern}"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # start NAME CONFIG ARGS...; prints the port
  local name=$1 config=$2; shift 2
  local port; port=$(free_port)
  "$TERN" broker --listen "127.0.0.1:$port" --no-http --log warn --config "$config" "$@" >"$WORK/$name.log" 2>&1 &
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  echo "$port"
}

for store in memory disk; do
  for version in 5 3.1.1; do
    printf 'sys_interval_secs = 0\n' >"$WORK/b.toml"
    b=$(start "b-$store-$version" "$WORK/b.toml" --in-memory)
    cat >"$WORK/a.toml" <<TOML
sys_interval_secs = 0
max_queued_messages = 100000

[[bridge]]
name = "bench"
remote = "mqtt://127.0.0.1:$b"
version = "$version"
max_inflight = ${MAX_INFLIGHT:-100}

[[bridge.topic]]
filter = "bench/#"
direction = "out"
qos = 1
TOML
    if [ "$store" = memory ]; then
      a=$(start "a-$store-$version" "$WORK/a.toml" --in-memory)
    else
      a=$(start "a-$store-$version" "$WORK/a.toml" --data-dir "$WORK/data-$version")
    fi
    sleep 1 # the bridge connects
    printf 'store=%s remote=%s bridged ' "$store" "$version"
    "$TERN" bench -p "$a" --sub-port "$b" -s fan-in -q 1 -V 5 -d "$DURATION" --quiet
    printf 'store=%s remote=%s direct  ' "$store" "$version"
    "$TERN" bench -p "$b" -s fan-in -q 1 -V 5 -d "$DURATION" --quiet
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
  done
done
