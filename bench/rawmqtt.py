"""What the memory benchmarks share: an MQTT 3.1.1 client on a plain socket (fast enough to
publish and read a million messages from Python), a broker process started on a free port with its
own data directory (Tern or Mosquitto), and RSS readings of that process (now, and the peak while a
block runs). Every wait is bounded.
"""
import os, signal, socket, struct, subprocess, sys, threading, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


class Peak:
    """The largest RSS of process `pid`, sampled every 50 ms while `with` runs."""

    def __init__(self, pid):
        self.pid, self.mib, self.run = pid, 0, True

    def __enter__(self):
        def sample():
            while self.run:
                try:
                    self.mib = max(self.mib, rss_mib(self.pid))
                except OSError:
                    pass
                time.sleep(0.05)

        self.t = threading.Thread(target=sample, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *_):
        self.run = False
        self.t.join()


def disk_mib(path):
    total = 0
    for root, _, files in os.walk(path):
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


def publish_packet(topic, pid, payload, retain=False):
    """A QoS 1 PUBLISH."""
    body = s16(topic) + struct.pack(">H", pid) + payload
    return bytes([0x32 | (1 if retain else 0)]) + varint(len(body)) + body


def connect_packet(client_id, clean):
    """An MQTT 3.1.1 CONNECT (keep-alive off)."""
    body = s16(b"MQTT") + bytes([4, 2 if clean else 0]) + struct.pack(">H", 0) + s16(client_id.encode())
    return b"\x10" + varint(len(body)) + body


class Reader:
    """Packets from a socket: (type, body); for a PUBLISH (3, (first byte, body))."""

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
                    first = self.buf[0]
                    body = self.buf[i + 1:i + 1 + length]
                    self.buf = self.buf[i + 1 + length:]
                    return first >> 4, (first, body) if first >> 4 == 3 else body
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk


class Conn:
    """An MQTT 3.1.1 connection (keep-alive off)."""

    def __init__(self, port, client_id, clean, timeout=60):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.s)
        self.s.sendall(connect_packet(client_id, clean))
        t, b = self.packet()
        assert t == 2 and b[1] == 0, (t, b)
        self.present = b[0] & 1

    def packet(self):
        """(type, body); for a PUBLISH (3, (first byte, body))."""
        return self.reader.packet()

    def subscribe(self, f, qos=1):
        body = struct.pack(">H", 1) + s16(f.encode()) + bytes([qos])
        self.s.sendall(b"\x82" + varint(len(body)) + body)
        while True:
            t, _ = self.packet()
            if t == 9:
                return

    def publish_all(self, n, packet_of, window=200):
        """Send `n` QoS 1 messages (`packet_of(k, pid)` gives the K-th), `window` in flight;
        return once all are acknowledged."""
        sent = acked = 0
        while acked < n:
            out = b""
            while sent < n and sent - acked < window:
                out += packet_of(sent, sent % 65535 + 1)
                sent += 1
            if out:
                self.s.sendall(out)
            t, _ = self.packet()
            if t == 4:
                acked += 1

    def close(self):
        try:
            self.s.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.s.close()


class Broker:
    """`kind` ("tern" or "mosquitto") at `binary`, on a free port, its data in `work`; `extra` is
    appended to its configuration file; `log` is Tern's log level."""

    def __init__(self, kind, binary, work, extra="", log="warn"):
        self.kind, self.binary, self.work, self.extra, self.log = kind, binary, work, extra, log
        self.port = free_port()
        self.p = None

    def start(self):
        """Start it; the seconds until a CONNECT was answered."""
        if self.kind == "tern":
            conf = os.path.join(self.work, "tern.toml")
            with open(conf, "w") as f:
                f.write(f'listen = ["127.0.0.1:{self.port}"]\nhttp = ""\ndata_dir = "{self.work}/data"\n'
                        f"sys_interval_secs = 0\n{self.extra}\n")
            cmd = [self.binary, "broker", "--config", conf, "--log", self.log]
        else:
            conf = os.path.join(self.work, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\nuser root\n"
                        f"persistence_location {self.work}/\nautosave_interval 0\n{self.extra}\n")
            cmd = [self.binary, "-c", conf]
        t0 = time.time()
        # BROKER_STDERR (environment): a file for the broker's standard error, appended to.
        err = open(os.environ["BROKER_STDERR"], "ab") if os.environ.get("BROKER_STDERR") else subprocess.DEVNULL
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        # Started once a CONNECT gets its CONNACK (the listening socket may accept before).
        while time.time() - t0 < 300:
            try:
                Conn(self.port, "probe", clean=True).close()
                return time.time() - t0
            except (OSError, EOFError, AssertionError):
                if self.p.poll() is not None:
                    sys.exit(f"{self.kind} exited at start")
                time.sleep(0.02)
        self.p.kill()
        sys.exit(f"{self.kind} did not start")

    def rss(self):
        return rss_mib(self.p.pid)

    def stop(self, timeout=300):
        """SIGTERM, and wait (Mosquitto writes its database then)."""
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
