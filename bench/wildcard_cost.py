#!/usr/bin/env python3
"""Broker CPU per publish when many overlapping wildcard filters match it.

The scenario of the resilience issue, item 3: CLIENTS subscribers each subscribe to
FILTERS distinct filters of the family {a,+}^LEVELS (every level either the literal `a`
or `+`), so every one of them matches the topic a/a/.../a. One publisher then sends
PUBLISHES QoS 0 messages to that topic. The broker's CPU time (utime + stime from
/proc/PID/stat) over the publishing phase, divided by PUBLISHES, is the cost of one
publish; nothing is subtracted. A baseline run (publishes to the same topic before anyone
subscribed) comes first.

The script starts nothing: run the broker yourself and give its port and PID.

    bench/wildcard_cost.py PORT PID [--publishes 300] [--baseline-publishes 20000]
                           [--clients 66] [--filters 1000] [--levels 16] [--seed 1]

Filters are chosen with a seeded random generator (distinct within each client; two
clients may share a filter, as real clients would), so every run and every broker gets
the same set. Raw MQTT 3.1.1 packets, no client library. Subscribers are read all the
time by one thread (so no queue fills up), and each message must reach each subscriber
exactly once: the count of deliveries is checked and reported.
"""

import argparse
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id, keepalive=600):
    # 3.1.1, Clean Session.
    body = mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + mqtt_str(client_id)
    return packet(0x10, body)


def subscribe_packet(pid, filters):
    body = struct.pack("!H", pid) + b"".join(mqtt_str(f) + b"\x00" for f in filters)
    return packet(0x82, body)


def publish_packet(topic, payload):
    return packet(0x30, mqtt_str(topic) + payload)


PINGREQ = b"\xc0\x00"


class Reader:
    """Splits a byte stream into MQTT packets (type, body)."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            if len(self.buf) < 2:
                return out
            mult, n, i = 1, 0, 1
            while True:
                if i >= len(self.buf):
                    return out
                b = self.buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            if len(self.buf) < i + n:
                return out
            out.append((self.buf[0] >> 4, bytes(self.buf[i : i + n])))
            del self.buf[: i + n]


def recv_packet(sock, reader, pending):
    while not pending:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("broker closed the connection")
        pending.extend(reader.feed(data))
    return pending.pop(0)


def open_client(port, client_id):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet(client_id))
    reader, pending = Reader(), []
    kind, body = recv_packet(s, reader, pending)
    if kind != 2 or len(body) < 2 or body[1] != 0:
        raise ConnectionError(f"{client_id}: CONNACK refused ({body.hex()})")
    return s, reader, pending


def filters_for(rng, count, levels):
    """`count` distinct filters of {a,+}^levels: bit i of a mask set means `+` at level i."""
    masks = rng.sample(range(1 << levels), count)
    return ["/".join("+" if m >> i & 1 else "a" for i in range(levels)) for m in masks]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def subscribe_all(port, args):
    rng = random.Random(args.seed)
    subs = []
    refused = 0
    for c in range(args.clients):
        s, reader, pending = open_client(port, f"wild-{c}")
        filters = filters_for(rng, args.filters, args.levels)
        batch = 100
        for pid, start in enumerate(range(0, len(filters), batch), start=1):
            s.sendall(subscribe_packet(pid, filters[start : start + batch]))
        for _ in range(0, len(filters), batch):
            kind, body = recv_packet(s, reader, pending)
            if kind != 9:
                raise ConnectionError(f"wild-{c}: expected SUBACK, got type {kind}")
            refused += sum(1 for code in body[2:] if code == 0x80)
        subs.append(s)
    return subs, refused


def drain(subs, counts, stop):
    """Read every subscriber until `stop` is set, counting PUBLISH packets per subscriber."""
    sel = selectors.DefaultSelector()
    readers = {}
    for i, s in enumerate(subs):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        readers[i] = Reader()
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.05):
            i = key.data
            try:
                data = key.fileobj.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fileobj)
                continue
            counts[i] += sum(1 for kind, _ in readers[i].feed(data) if kind == 3)


def wait_idle(pid, settle=0.3, limit=30.0):
    """Wait until the broker spends no CPU for `settle` seconds."""
    deadline = time.monotonic() + limit
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now


def publish_run(port, pid, publishes, topic, expect_total, counts):
    """Publish, wait for the PINGRESP after the last PUBLISH and for every delivery; CPU ms per publish."""
    pub, reader, pending = open_client(port, f"wild-pub-{time.monotonic_ns()}")
    payload = b"x" * 16
    wait_idle(pid)
    before_counts = sum(counts)
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    chunk = publish_packet(topic, payload) * 50
    sent = 0
    while sent < publishes:
        n = min(50, publishes - sent)
        pub.sendall(chunk if n == 50 else publish_packet(topic, payload) * n)
        sent += n
    pub.sendall(PINGREQ)
    kind, _ = recv_packet(pub, reader, pending)
    if kind != 13:
        raise ConnectionError(f"expected PINGRESP, got type {kind}")
    deadline = time.monotonic() + 120
    while sum(counts) - before_counts < expect_total and time.monotonic() < deadline:
        time.sleep(0.01)
    wall = time.monotonic() - t0
    c1 = cpu_ticks(pid)
    pub.close()
    delivered = sum(counts) - before_counts
    ms = (c1 - c0) * 1000.0 / HZ / publishes
    return ms, wall, delivered


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("pid", type=int, help="the broker's process id, for /proc/PID/stat")
    ap.add_argument("--publishes", type=int, default=300)
    ap.add_argument("--baseline-publishes", type=int, default=20000,
                    help="publishes of the baseline run (many: a CPU tick is 10 ms)")
    ap.add_argument("--clients", type=int, default=66)
    ap.add_argument("--filters", type=int, default=1000, help="filters per client")
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    topic = "/".join(["a"] * args.levels)

    counts = [0] * args.clients
    base_ms, base_wall, _ = publish_run(args.port, args.pid, args.baseline_publishes, topic, 0, counts)
    print(f"baseline (no subscribers): {base_ms:.4f} ms CPU per publish "
          f"({args.baseline_publishes} publishes, {base_wall:.2f} s)")

    t0, c0, m0 = time.monotonic(), cpu_ticks(args.pid), rss_mib(args.pid)
    subs, refused = subscribe_all(args.port, args)
    sub_s = (cpu_ticks(args.pid) - c0) / HZ
    print(f"subscribed {args.clients} x {args.filters} filters of {{a,+}}^{args.levels} "
          f"in {time.monotonic() - t0:.1f} s ({sub_s:.2f} s broker CPU, broker RSS "
          f"{m0:.0f} -> {rss_mib(args.pid):.0f} MiB); refused: {refused}")

    stop = threading.Event()
    t = threading.Thread(target=drain, args=(subs, counts, stop), daemon=True)
    t.start()
    expect = args.publishes * args.clients
    ms, wall, delivered = publish_run(args.port, args.pid, args.publishes, topic, expect, counts)
    stop.set()
    t.join()
    dup = [c for c in counts if c != args.publishes]
    print(f"wildcards: {ms:.3f} ms CPU per publish ({args.publishes} publishes, {wall:.2f} s, "
          f"{delivered}/{expect} delivered{'' if not dup else f', {len(dup)} subscribers off: {dup[:5]}'})")
    for s in subs:
        s.close()
    return 0 if delivered == expect and not dup else 1


if __name__ == "__main__":
    sys.exit(main())
