#!/usr/bin/env python3
"""The adversarial suite at full size, against a release `tern broker --in-memory` (its default
limits, plus a WebSocket listener) and, when installed, Mosquitto (its defaults, TCP only: Debian's
build has no WebSocket support), each attack on a freshly started broker.

    python3 bench/adversarial.py [--tern target/release/tern] [--only NAME[,NAME]] [--no-mosquitto]

Throughout each attack a canary publishes one QoS 1 message every 10 ms to its own subscriber;
the table gives its round-trip p50/p99/max in ms and how many messages the broker acknowledged
(PUBACK) but never delivered ("lost"; "DROPPED" when a canary connection was closed). The
broker's peak RSS (VmRSS) and CPU seconds (utime + stime) are sampled from /proc every 100 ms.
Every attack is bounded in time; "open" counts the attackers' sockets still open when it gave
up waiting. Needs Python 3 only (no MQTT library): packets are written by hand.
"""
import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

# --- packets -------------------------------------------------------------------------------


def varint(x):
    out = b""
    while True:
        b = x % 128
        x //= 128
        out += bytes([b | (0x80 if x else 0)])
        if not x:
            return out


def s16(b):
    return struct.pack(">H", len(b)) + b


def connect(cid, level=4, clean=True, will=None, expiry=None):
    flags = 0x02 if clean else 0
    payload = s16(cid)
    props = b""
    if level == 5:
        if expiry is not None:
            props = b"\x11" + struct.pack(">I", expiry)
        props = varint(len(props)) + props
    if will is not None:
        topic, msg = will
        flags |= 0x04 | 0x08  # will, QoS 1
        payload += (b"\x00" if level == 5 else b"") + s16(topic) + s16(msg)
    body = s16(b"MQTT") + bytes([level, flags]) + b"\x00\x00" + props + payload
    return b"\x10" + varint(len(body)) + body


def publish(topic, payload, pid=None, level=4, alias=None):
    body = s16(topic) + (struct.pack(">H", pid) if pid else b"")
    if level == 5:
        props = b"" if alias is None else b"\x23" + struct.pack(">H", alias)
        body += varint(len(props)) + props
    body += payload
    return bytes([0x32 if pid else 0x30]) + varint(len(body)) + body


def subscribe(pid, filters, qos=1, level=4):
    body = struct.pack(">H", pid) + (b"\x00" if level == 5 else b"")
    for f in filters:
        body += s16(f) + bytes([qos])
    return b"\x82" + varint(len(body)) + body


def puback(pid):
    return b"\x40\x02" + struct.pack(">H", pid)


class Reader:
    """Splits a socket's bytes into (first byte, body) packets."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def packet(self):
        while True:
            if len(self.buf) >= 2:
                n, mul, i = 0, 1, 1
                while i < len(self.buf) and i <= 4:
                    n += (self.buf[i] & 0x7F) * mul
                    mul *= 128
                    if self.buf[i] & 0x80 == 0:
                        if len(self.buf) >= i + 1 + n:
                            p = (self.buf[0], self.buf[i + 1 : i + 1 + n])
                            self.buf = self.buf[i + 1 + n :]
                            return p
                        break
                    i += 1
            d = self.sock.recv(65536)
            if not d:
                return None
            self.buf += d


def open_mqtt(port, cid, level=4, **kw):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(connect(cid, level, **kw))
    r = Reader(s)
    p = r.packet()
    ok = p is not None and p[0] == 0x20 and p[1][1] == 0
    return s, r, ok


def closed_by_peer(socks, wait):
    """Waits up to `wait` s for the peer to close each socket; returns how many stayed open."""
    deadline = time.time() + wait
    for s in socks:
        s.setblocking(False)
    open_ = set(range(len(socks)))
    while open_ and time.time() < deadline:
        for i in list(open_):
            try:
                if socks[i].recv(65536) == b"":
                    open_.discard(i)
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(i)
        time.sleep(0.2)
    for s in socks:
        s.close()
    return len(open_)


# --- brokers, monitor, canary --------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Broker:
    def __init__(self, kind, tern, work):
        self.kind, self.port, self.ws = kind, free_port(), free_port()
        log = open(os.path.join(work, f"{kind}-{self.port}.log"), "w")
        if kind == "tern":
            cmd = [tern, "broker", "--in-memory", "--listen", f"127.0.0.1:{self.port}",
                   "--listen", f"ws://127.0.0.1:{self.ws}/mqtt", "--log", "error"]
        else:
            conf = os.path.join(work, f"mosquitto-{self.port}.conf")
            with open(conf, "w") as f:
                # Debian's Mosquitto 2.0.11 is built without WebSocket support: TCP only.
                f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nlog_type error\n")
                self.ws = None
            cmd = ["mosquitto", "-c", conf]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{kind} did not start")

    def rss(self):
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        except OSError:
            pass
        return 0

    def cpu(self):
        try:
            f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Monitor(threading.Thread):
    def __init__(self, broker):
        super().__init__(daemon=True)
        self.b, self.stop, self.peak = broker, False, broker.rss()
        self.start_rss, self.cpu0 = self.peak, broker.cpu()

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, self.b.rss())
            time.sleep(0.1)

    def finish(self):
        self.stop = True
        self.join()
        return self.peak, self.b.cpu() - self.cpu0


class Canary:
    """QoS 1 every 10 ms from a publisher to a subscriber on the canary's own topic."""

    def __init__(self, port):
        self.sub, self.sr, ok1 = open_mqtt(port, b"canary-sub")
        self.sub.sendall(subscribe(1, [b"canary/rt"]))
        self.sr.packet()
        self.pub, self.pr, ok2 = open_mqtt(port, b"canary-pub")
        if not (ok1 and ok2):
            raise SystemExit("canary could not connect")
        # Packet ids wrap after 65,535 messages (11 minutes): no attack lasts that long.
        self.sent, self.pids, self.acked, self.rtt = {}, {}, set(), {}
        self.stop, self.dropped = False, False
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.publisher, self.acks, self.subscriber)]
        for t in self.threads:
            t.start()

    def publisher(self):
        n = 0
        while not self.stop:
            n += 1
            self.sent[n] = time.time()
            self.pids[n % 65535 + 1] = n
            try:
                self.pub.sendall(publish(b"canary/rt", str(n).encode(), pid=n % 65535 + 1))
            except OSError:
                self.dropped = True
                return
            time.sleep(0.01)

    def acks(self):
        while True:
            try:
                p = self.pr.packet()
            except OSError:
                p = None
            if p is None:
                self.dropped |= not self.stop
                return
            if p[0] >> 4 == 4:
                self.acked.add(self.pids[struct.unpack(">H", p[1][:2])[0]])

    def subscriber(self):
        while True:
            try:
                p = self.sr.packet()
            except OSError:
                p = None
            if p is None:
                self.dropped |= not self.stop
                return
            if p[0] >> 4 == 3:
                body = p[1]
                tl = struct.unpack(">H", body[:2])[0]
                pid = struct.unpack(">H", body[2 + tl:4 + tl])[0]
                n = int(body[4 + tl:])
                self.rtt[n] = (time.time() - self.sent[n]) * 1000
                try:
                    self.sub.sendall(puback(pid))
                except OSError:
                    pass

    def finish(self):
        self.stop = True
        time.sleep(3)  # what was acknowledged has 3 s to arrive
        lost = len([n for n in self.acked if n not in self.rtt])
        for s in (self.pub, self.sub):
            s.close()
        r = sorted(self.rtt.values()) or [0]
        pct = lambda q: r[min(len(r) - 1, int(q * len(r)))]
        return {"n": len(self.rtt), "p50": pct(0.5), "p99": pct(0.99), "max": r[-1],
                "lost": "DROPPED" if self.dropped else lost}


# --- attacks (each returns a short outcome) ------------------------------------------------


def partial_connect(b):
    size, socks = 131072, []
    head = b"\x10" + varint(size - 5) + s16(b"MQTT") + b"\x04\x02\x00\x00"
    data = head + b"x" * (int(size * 0.99) - len(head))
    for _ in range(2000):
        s = socket.create_connection(("127.0.0.1", b.port))
        try:
            s.sendall(data)
        except OSError:
            pass
        socks.append(s)
    return f"2,000 x 99% of a 128 KiB CONNECT; open after 30 s: {closed_by_peer(socks, 30)}"


def partial_publish(b):
    size, socks = 1 << 20, []
    head = b"\x30" + varint(size - 5) + s16(b"t")
    data = head + b"x" * (int(size * 0.99) - len(head))
    for i in range(2000):
        s, _, _ = open_mqtt(b.port, b"pp%d" % i)
        try:
            s.sendall(data)
        except OSError:
            pass
        socks.append(s)
    return f"2,000 x 99% of a 1 MiB PUBLISH; open after 45 s: {closed_by_peer(socks, 45)}"


def slowloris(b):
    socks = []
    for i in range(10000):
        s = socket.create_connection(("127.0.0.1", b.port))
        if i % 2:
            s.sendall(b"\x10")
        socks.append(s)
    late = open_mqtt(b.port, b"late")
    ok = late[2]
    late[0].close()
    return f"10,000 sockets, no CONNECT; new client ok: {ok}; open after 20 s: {closed_by_peer(socks, 20)}"


def oversize(b):
    socks, junk = [], b"x" * 65536
    for i in range(2000):
        if i % 2:
            s = socket.create_connection(("127.0.0.1", b.port))
            first = b"\x10\xff\xff\xff\x7f" + s16(b"MQTT") + b"\x04\x02\x00\x00"
        else:
            s, _, _ = open_mqtt(b.port, b"ov%d" % i)
            first = b"\x30\xff\xff\xff\x7f" + s16(b"t")
        try:
            s.sendall(first + junk)
        except OSError:
            pass
        socks.append(s)
    return f"2,000 x 268 MB announced (+64 KiB sent); open after 15 s: {closed_by_peer(socks, 15)}"


def subscription_flood(b):
    granted = refused = 0
    clients = []
    for c in range(50):
        s, r, _ = open_mqtt(b.port, b"sf%d" % c)
        for k in range(100):
            s.sendall(subscribe(k + 1, [b"sf/%d/%d/%d/+/#" % (c, k, f) for f in range(100)]))
            p = r.packet()
            codes = p[1][2:] if p else b""
            granted += sum(1 for x in codes if x < 0x80)
            refused += sum(1 for x in codes if x >= 0x80)
        clients.append(s)
    for s in clients:
        s.close()
    return f"50 clients x 10,000 filters: granted {granted}, refused {refused}"


def slow_consumer(b, tern):
    stalled = socket.create_connection(("127.0.0.1", b.port))
    stalled.sendall(connect(b"stalled") + subscribe(1, [b"#"]))
    time.sleep(0.5)  # never read again
    out = subprocess.run([tern, "bench", "--port", str(b.port), "--scenario", "fan-in", "--publishers", "8",
                          "--qos", "1", "--duration", "20", "--quiet"], capture_output=True, text=True,
                         timeout=120).stdout
    line = next((l for l in out.splitlines() if l.startswith("result")), "result failed")
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    stalled.close()
    return f"stalled '#' subscriber + 8 QoS 1 publishers 20 s: {float(f.get('rate', 0)):,.0f} msg/s delivered, lost {f.get('lost')}"


def malformed(b):
    bad = [b"\x30\xff\xff\xff\xff\x7f", b"\x80\x06\x00\x01\x00\x01a\x00", b"\x36\x05\x00\x01a\x00\x01",
           b"\x32\x06\x00\x01a\x00\x00\x00", b"\x30\x06\x00\x03a\x00b\x00", b"\x20\x03\x00\x00\x00"]
    t0, stuck = time.time(), 0
    for batch in range(40):
        socks = []
        for i in range(500):
            s, _, _ = open_mqtt(b.port, b"mf%d-%d" % (batch, i))
            socks.append(s)
        for i, s in enumerate(socks):
            try:
                s.sendall(bad[i % len(bad)])
            except OSError:
                pass
        stuck += closed_by_peer(socks, 10)
    return f"20,000 connections, one malformed packet each: {20000 / (time.time() - t0):,.0f}/s; not closed: {stuck}"


def ws_flood(b):
    up = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    reqs = ["GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", "GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /mqtt HTTP/1.1\r\nHost: x\r\n{up}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
            f"GET /mqtt HTTP/1.1\r\nX-Pad: {'a' * 20000}\r\n\r\n"]
    answered = stuck = 0
    for batch in range(20):
        socks = []
        for i in range(500):
            s = socket.create_connection(("127.0.0.1", b.ws))
            try:
                s.sendall(reqs[i % len(reqs)].encode())
            except OSError:
                pass
            socks.append(s)
        for s in socks:
            s.settimeout(10)
            try:
                answered += s.recv(12).startswith(b"HTTP/1.1 4")
            except OSError:
                pass
        stuck += closed_by_peer(socks, 10)
    return f"10,000 bad upgrades: answered 4xx {answered}; not closed: {stuck}"


def topic_alias(b):
    codes, stuck = {}, 0
    for batch in range(10):
        socks = []
        for i in range(500):
            s, r, _ = open_mqtt(b.port, b"ta%d-%d" % (batch, i), level=5)
            s.sendall(publish(b"t", b"x", level=5, alias=65535))
            socks.append((s, r))
        for s, r in socks:
            s.settimeout(10)
            try:
                p = r.packet()
            except OSError:
                p = None
            key = "closed" if p is None else f"0x{p[1][0]:02x}" if p[0] >> 4 == 14 else "other"
            codes[key] = codes.get(key, 0) + 1
        stuck += closed_by_peer([s for s, _ in socks], 10)
    return f"5,000 v5 clients, Topic Alias 65535: {codes}; not closed: {stuck}"


def will_flood(b):
    start = b.rss()
    for r in range(6):
        socks = []
        for i in range(2000):
            cid = b"r%d-%d" % (r, i)
            s = socket.create_connection(("127.0.0.1", b.port))
            s.sendall(connect(cid, will=(b"wills/" + cid, b"w" * 65000)))
            socks.append(s)
        for s in socks:
            s.recv(4)
            s.close()
        time.sleep(1)
    t0, back = time.time(), None
    while time.time() - t0 < 20:
        if back is None and b.rss() - start <= 64:
            back = time.time() - t0
        time.sleep(0.25)
    back = "never" if back is None else f"{back:.1f} s"
    return f"6 x 2,000 wills of 65,000 B: RSS {start} -> {b.rss()} MiB 20 s later; within 64 MiB after {back}"


def session_flood(b):
    t0, accepted, refused = time.time(), 0, 0
    for i in range(50000):
        s = socket.create_connection(("127.0.0.1", b.port))
        s.sendall(connect(b"sess-%d" % i, clean=False) + b"\xe0\x00")
        p = Reader(s).packet()
        if p and p[1][1] == 0:
            accepted += 1
        else:
            refused += 1
        s.close()
    return f"50,000 persistent sessions: accepted {accepted}, refused {refused}, {50000 / (time.time() - t0):,.0f}/s"


ATTACKS = ["partial_connect", "partial_publish", "slowloris", "oversize", "subscription_flood",
           "slow_consumer", "malformed", "ws_flood", "topic_alias", "will_flood", "session_flood"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tern", default="target/release/tern")
    ap.add_argument("--only", default=",".join(ATTACKS))
    ap.add_argument("--no-mosquitto", action="store_true")
    a = ap.parse_args()
    brokers = ["tern"] + ([] if a.no_mosquitto or not shutil.which("mosquitto") else ["mosquitto"])
    work = tempfile.mkdtemp()
    rows = []
    for name in a.only.split(","):
        for kind in brokers:
            if name == "ws_flood" and kind == "mosquitto":
                continue  # Debian's Mosquitto is built without WebSocket support
            b = Broker(kind, a.tern, work)
            mon = Monitor(b)
            mon.start()
            canary = Canary(b.port)
            t0 = time.time()
            try:
                fn = globals()[name]
                outcome = fn(b, a.tern) if name == "slow_consumer" else fn(b)
            except Exception as e:  # noqa: BLE001 - the table shows what broke
                outcome = f"attack failed: {e!r}"
            took = time.time() - t0
            c = canary.finish()
            peak, cpu = mon.finish()
            alive = b.proc.poll() is None
            b.stop()
            row = (name, kind, peak, cpu, took, c, outcome if alive else "BROKER DIED; " + outcome)
            rows.append(row)
            print(f"{name} {kind}: rss {mon.start_rss}->{peak} MiB cpu {cpu:.1f} s in {took:.0f} s; canary {c}; {row[6]}",
                  file=sys.stderr, flush=True)
    print(f"{'attack':19}{'broker':10}{'peak RSS':>9}{'CPU s':>7}  {'canary ms p50/p99/max':>22}{'lost':>8}  outcome")
    for name, kind, peak, cpu, took, c, outcome in rows:
        lat = f"{c['p50']:.1f}/{c['p99']:.1f}/{c['max']:.0f}"
        print(f"{name:19}{kind:10}{peak:>6} MiB{cpu:>7.1f}  {lat:>22}{str(c['lost']):>8}  {outcome}")


if __name__ == "__main__":
    main()
