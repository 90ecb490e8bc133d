"""Start-up with a large store: S offline sessions, R retained messages, Q messages queued for one session.

    python3 bench/startup.py PATH/TO/tern [SESSIONS=100000] [RETAINED=1000000] [QUEUED=1000000] [SIZE=64]

Starts `tern broker` on a free port with a fresh data directory (`max_retained` and
`max_offline_messages` large enough), fills it over MQTT 3.1.1 (SESSIONS persistent sessions each
subscribed at QoS 1 to its own topic and gone; RETAINED retained QoS 1 messages of SIZE bytes on
distinct topics; QUEUED QoS 1 messages of SIZE bytes for one more session that is away), prints the
broker's RSS, restarts it (SIGTERM, start again) and prints the time until a CONNECT is answered, the
RSS then, and the start-up line the broker logs. Every wait is bounded.
"""
import os, shutil, signal, socket, struct, subprocess, sys, tempfile, time

binary = sys.argv[1]
sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
retained = int(sys.argv[3]) if len(sys.argv) > 3 else 1000000
queued = int(sys.argv[4]) if len(sys.argv) > 4 else 1000000
size = int(sys.argv[5]) if len(sys.argv) > 5 else 64
work = tempfile.mkdtemp(prefix="tern-startup-")
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
conf = os.path.join(work, "tern.toml")
with open(conf, "w") as f:
    f.write(f'listen = ["127.0.0.1:{port}"]\nhttp = ""\ndata_dir = "{work}/data"\nsys_interval_secs = 0\n'
            f'max_retained = {retained + 10}\nmax_offline_messages = {queued + 10}\n'
            f'max_offline_bytes = {(queued + 10) * (size + 64)}\nmax_sessions = {sessions + 100}\n'
            'max_connect_rate = 1000000\n')


def varint(x):
    out = b""
    while True:
        b, x = x % 128, x // 128
        out += bytes([b | (0x80 if x else 0)])
        if not x:
            return out


def s16(b):
    return struct.pack(">H", len(b)) + b


def connect_packet(cid, clean):
    body = s16(b"MQTT") + bytes([4, 2 if clean else 0]) + struct.pack(">H", 0) + s16(cid.encode())
    return b"\x10" + varint(len(body)) + body


class Reader:
    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def packet(self):
        while True:
            if len(self.buf) >= 2:
                mult, length, i = 1, 0, 1
                while i < len(self.buf):
                    length += (self.buf[i] & 127) * mult
                    mult *= 128
                    if self.buf[i] & 128 == 0:
                        break
                    i += 1
                else:
                    i = None
                if i is not None and len(self.buf) >= i + 1 + length:
                    t = self.buf[0] >> 4
                    body = self.buf[i + 1:i + 1 + length]
                    self.buf = self.buf[i + 1 + length:]
                    return t, body
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk


def open_conn(cid, clean=True):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(cid, clean))
    r = Reader(sock)
    t, b = r.packet()
    assert t == 2 and b[1] == 0, (t, b)
    return sock, r


def start():
    t0 = time.time()
    p = subprocess.Popen([binary, "broker", "--config", conf, "--log", "info"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "a"))
    while time.time() - t0 < 300:
        try:
            sock, _ = open_conn("probe")
            sock.close()
            return p, time.time() - t0
        except (OSError, EOFError, AssertionError):
            time.sleep(0.02)
    p.kill()
    sys.exit("broker did not start")


def rss_mib(p):
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024


def publish_many(sock, r, n, topic_of, retain):
    flags = 0x33 if retain else 0x32
    sent = acked = 0
    while acked < n:
        out = b""
        while sent < n and sent - acked < 500:
            body = s16(topic_of(sent).encode()) + struct.pack(">H", sent % 65535 + 1) + os.urandom(size)
            out += bytes([flags]) + varint(len(body)) + body
            sent += 1
        if out:
            sock.sendall(out)
        t, _ = r.packet()
        if t == 4:
            acked += 1


broker, _ = start()
t0 = time.time()
# Sessions: CONNECT (clean session 0), SUBSCRIBE, DISCONNECT, 200 connections at a time.
batch = 200
for base in range(0, sessions, batch):
    conns = []
    for i in range(base, min(base + batch, sessions)):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        body = struct.pack(">H", 1) + s16(f"s/{i}".encode()) + b"\x01"
        sock.sendall(connect_packet(f"sess-{i}", False) + b"\x82" + varint(len(body)) + body)
        conns.append((sock, Reader(sock)))
    for sock, r in conns:
        assert r.packet()[0] == 2
        assert r.packet()[0] == 9
        sock.sendall(b"\xe0\x00")
        sock.close()
print(f"{sessions} offline sessions made in {time.time() - t0:.1f} s")
away, r = open_conn("away", clean=False)
body = struct.pack(">H", 1) + s16(b"q/#") + b"\x01"
away.sendall(b"\x82" + varint(len(body)) + body)
assert r.packet()[0] == 9
away.sendall(b"\xe0\x00")
away.close()
pub, r = open_conn("publisher")
t0 = time.time()
publish_many(pub, r, retained, lambda i: f"ret/{i // 1000}/{i}", True)
print(f"{retained} retained messages of {size} B in {time.time() - t0:.1f} s")
t0 = time.time()
publish_many(pub, r, queued, lambda i: "q/t", False)
print(f"{queued} messages of {size} B queued for a session that is away in {time.time() - t0:.1f} s")
pub.sendall(b"\xe0\x00")
pub.close()
time.sleep(1)
du = sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(work) for f in fs) / 2**20
print(f"broker RSS {rss_mib(broker)} MiB, data on disk {du:.0f} MiB")
broker.send_signal(signal.SIGTERM)
try:
    broker.wait(timeout=300)
except subprocess.TimeoutExpired:
    broker.kill()
broker, took = start()
time.sleep(1)
print(f"restart: first CONNACK after {took:.2f} s; RSS {rss_mib(broker)} MiB")
for line in open(os.path.join(work, "log")):
    if "restored" in line:
        last = line.strip()
print("broker said:", last[last.find("restored") - 20:] if "last" in dir() else "?")
broker.send_signal(signal.SIGTERM)
try:
    broker.wait(timeout=120)
except subprocess.TimeoutExpired:
    broker.kill()
shutil.rmtree(work, ignore_errors=True)
