"""Start-up with a large store: S offline sessions, R retained messages, Q messages queued for one session.

    python3 bench/startup.py PATH/TO/tern [SESSIONS=100000] [RETAINED=1000000] [QUEUED=1000000] [SIZE=64]

Starts `tern broker` on a free port with a fresh data directory (`max_retained` and
`max_offline_messages` large enough), fills it over MQTT 3.1.1 (SESSIONS persistent sessions each
subscribed at QoS 1 to its own topic and gone; RETAINED retained QoS 1 messages of SIZE bytes on
distinct topics; QUEUED QoS 1 messages of SIZE bytes for one more session that is away), prints the
broker's RSS, restarts it (SIGTERM, start again) and prints the time until a CONNECT is answered, the
RSS then, and the start-up line the broker logs. Every wait is bounded.
"""
import os, shutil, socket, struct, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawmqtt import Broker, Conn, Reader, connect_packet, disk_mib, s16, varint  # noqa: E402

binary = sys.argv[1]
sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
retained = int(sys.argv[3]) if len(sys.argv) > 3 else 1000000
queued = int(sys.argv[4]) if len(sys.argv) > 4 else 1000000
size = int(sys.argv[5]) if len(sys.argv) > 5 else 64
work = tempfile.mkdtemp(prefix="tern-startup-")
# The broker's log, for the line it writes once its state is restored.
os.environ["BROKER_STDERR"] = os.path.join(work, "log")
broker = Broker("tern", binary, work,
                f"max_retained = {retained + 10}\nmax_offline_messages = {queued + 10}\n"
                f"max_offline_bytes = {(queued + 10) * (size + 64)}\nmax_sessions = {sessions + 100}\n"
                "max_connect_rate = 1000000\n", log="info")
port = broker.port


def open_conn(cid, clean=True):
    c = Conn(port, cid, clean)
    return c.s, c.reader


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


broker.start()
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
print(f"broker RSS {broker.rss()} MiB, data on disk {disk_mib(work):.0f} MiB")
broker.stop()
took = broker.start()
time.sleep(1)
print(f"restart: first CONNACK after {took:.2f} s; RSS {broker.rss()} MiB")
for line in open(os.path.join(work, "log")):
    if "restored" in line:
        last = line.strip()
print("broker said:", last[last.find("restored") - 20:] if "last" in dir() else "?")
broker.stop()
shutil.rmtree(work, ignore_errors=True)
