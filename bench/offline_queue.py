"""One persistent session away while N messages are published for it: memory, restart, delivery.

    python3 bench/offline_queue.py tern PATH/TO/tern [N=200000] [SIZE=1024]
    python3 bench/offline_queue.py mosquitto /usr/sbin/mosquitto [N] [SIZE]

Starts the broker itself on a free port with a fresh data directory (Tern: `max_offline_messages`
and `max_offline_bytes` large enough for N; Mosquitto: `persistence true`, `max_queued_messages 0`
and `max_queued_bytes 0`, i.e. no limit). A client `away` (MQTT 3.1.1, clean session 0) subscribes
to `q/#` at QoS 1 and leaves; a publisher sends N QoS 1 messages of SIZE bytes (200 in flight).
Prints the broker's RSS then; restarts the broker (SIGTERM, start again) and prints how long it took
to answer a CONNECT and its RSS; then `away` returns and the script counts the messages it gets
(and whether they are in order) and prints the RSS at the end. Every wait is bounded.
"""
import os, shutil, signal, socket, struct, subprocess, sys, tempfile, time

kind, binary = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
work = tempfile.mkdtemp(prefix="tern-offline-queue-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


port = free_port()


def start():
    if kind == "tern":
        conf = os.path.join(work, "tern.toml")
        with open(conf, "w") as f:
            f.write(f'listen = ["127.0.0.1:{port}"]\nhttp = ""\ndata_dir = "{work}/data"\n'
                    f'max_offline_messages = {n + 1000}\nmax_offline_bytes = {(n + 1000) * size * 2}\n'
                    f'max_store_bytes = {64 << 30}\n')
        cmd = [binary, "broker", "--config", conf, "--log", "warn"]
    else:
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\nuser root\n"
                    f"persistence_location {work}/\nmax_queued_messages 0\nmax_queued_bytes 0\n"
                    "autosave_interval 0\n")
        cmd = [binary, "-c", conf]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Started once a CONNECT gets its CONNACK (the listening socket may accept before).
    while time.time() - t0 < 120:
        try:
            Conn("probe", clean=True).close()
            return p, time.time() - t0
        except (OSError, EOFError, AssertionError):
            time.sleep(0.02)
    p.kill()
    sys.exit("broker did not start")


def rss_mib(p):
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024


def disk_mib():
    total = 0
    for root, _, files in os.walk(work):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total / 2**20


def varint(x):
    out = b""
    while True:
        b, x = x % 128, x // 128
        out += bytes([b | (0x80 if x else 0)])
        if not x:
            return out


def s16(b):
    return struct.pack(">H", len(b)) + b


class Conn:
    def __init__(self, client_id, clean):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        body = s16(b"MQTT") + bytes([4, 0 if not clean else 2]) + struct.pack(">H", 0) + s16(client_id.encode())
        self.s.sendall(b"\x10" + varint(len(body)) + body)
        t, b = self.packet()
        assert t == 2 and b[1] == 0, (t, b)
        self.present = b[0] & 1

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
                    first = self.buf[0]
                    body = self.buf[i + 1:i + 1 + length]
                    self.buf = self.buf[i + 1 + length:]
                    return first >> 4, (first, body) if first >> 4 == 3 else body
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def subscribe(self, f):
        body = struct.pack(">H", 1) + s16(f.encode()) + b"\x01"
        self.s.sendall(b"\x82" + varint(len(body)) + body)
        t, _ = self.packet()
        assert t == 9

    def close(self):
        self.s.sendall(b"\xe0\x00")
        self.s.close()


broker, _ = start()
away = Conn("away", clean=False)
away.subscribe("q/#")
away.close()
pub = Conn("publisher", clean=True)
payload = os.urandom(size)
t0 = time.time()
sent = acked = 0
window = 200
while acked < n:
    out = b""
    while sent < n and sent - acked < window:
        pid = sent % 65535 + 1
        body = s16(b"q/t") + struct.pack(">H", pid) + struct.pack(">Q", sent) + payload[8:]
        out += b"\x32" + varint(len(body)) + body
        sent += 1
    if out:
        pub.s.sendall(out)
    t, _ = pub.packet()
    if t == 4:
        acked += 1
pub_secs = time.time() - t0
pub.close()
time.sleep(1)
print(f"{kind}: {n} QoS 1 messages of {size} B for an offline session: published in {pub_secs:.1f} s "
      f"({n / pub_secs:.0f}/s); broker RSS {rss_mib(broker)} MiB, data on disk {disk_mib():.0f} MiB")

broker.send_signal(signal.SIGTERM)
try:
    broker.wait(timeout=120)
except subprocess.TimeoutExpired:
    broker.kill()
broker, took = start()
time.sleep(0.5)
print(f"{kind}: restart: first CONNACK after {took:.2f} s; RSS {rss_mib(broker)} MiB")

away = Conn("away", clean=False)
t0 = time.time()
got, in_order, last = 0, True, -1
away.s.settimeout(30)
try:
    while got < n:
        t, rest = away.packet()
        if t != 3:
            continue
        first, body = rest
        tl = struct.unpack(">H", body[:2])[0]
        pid = body[2 + tl:4 + tl]
        k = struct.unpack(">Q", body[4 + tl:12 + tl])[0]
        in_order &= k == last + 1
        last = k
        got += 1
        away.s.sendall(b"\x40\x02" + pid)
except (socket.timeout, EOFError):
    pass
secs = time.time() - t0
print(f"{kind}: the session came back: received {got} of {n} in {secs:.1f} s, in order: {in_order}; "
      f"broker RSS {rss_mib(broker)} MiB")
broker.send_signal(signal.SIGTERM)
try:
    broker.wait(timeout=60)
except subprocess.TimeoutExpired:
    broker.kill()
shutil.rmtree(work, ignore_errors=True)
