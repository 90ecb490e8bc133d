"""Many offline persistent sessions holding one topic, against a broker on 127.0.0.1:PORT (process PID).

    python3 bench/offline_sessions.py PORT PID DATA_DIR [SESSIONS=10000] [PUBLISHES=20] [SIZE=1024]

Creates SESSIONS persistent MQTT 3.1.1 sessions (clean session 0) subscribed at QoS 1 to `flood/t`
and leaves them offline; then a publisher sends PUBLISHES QoS 1 messages of SIZE bytes to `flood/t`,
one at a time (each waits for its PUBACK), while a canary client does QoS 1 round trips on its own
topic. Prints the time per publish, the canary's worst round trip, the size of DATA_DIR on disk
(pass "-" for an in-memory broker), the broker's RSS, and how many messages one returning session
receives. Bounded: every wait gives up after 60 s.
"""
import os, socket, struct, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rawmqtt  # noqa: E402
from rawmqtt import s16, varint  # noqa: E402

port, pid, data_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
pubs = int(sys.argv[5]) if len(sys.argv) > 5 else 20
size = int(sys.argv[6]) if len(sys.argv) > 6 else 1024


def rss_mib():
    return rawmqtt.rss_mib(pid)


def disk_mib():
    return 0 if data_dir == "-" else rawmqtt.disk_mib(data_dir)


def connect(cid, clean):
    body = b"\x00\x04MQTT\x04" + bytes([0x02 if clean else 0x00]) + b"\x00\x3c" + s16(cid)
    return b"\x10" + varint(len(body)) + body


def subscribe(pid_, topic, qos=1):
    body = struct.pack(">H", pid_) + s16(topic) + bytes([qos])
    return b"\x82" + varint(len(body)) + body


def publish(topic, payload, pid_):
    body = s16(topic) + struct.pack(">H", pid_) + payload
    return b"\x32" + varint(len(body)) + body


def recv_exact(s, k):
    buf = b""
    while len(buf) < k:
        d = s.recv(k - len(buf))
        if not d:
            raise ConnectionError("closed")
        buf += d
    return buf


def read_packet(s):
    first = recv_exact(s, 1)[0]
    mult, length = 1, 0
    while True:
        b = recv_exact(s, 1)[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return first, recv_exact(s, length)


def open_client(cid, clean=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(connect(cid, clean))
    first, body = read_packet(s)
    assert first == 0x20 and body[1] == 0, f"CONNACK refused: {body!r}"
    return s


# 1. Sessions, in batches: CONNECT + SUBSCRIBE on each socket, then the answers, then DISCONNECT.
t0 = time.time()
batch = 500
for start in range(0, n, batch):
    socks = []
    for i in range(start, min(n, start + batch)):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(connect(b"off%d" % i, False) + subscribe(1, b"flood/t"))
        socks.append(s)
    for s in socks:
        first, body = read_packet(s)
        assert first == 0x20 and body[1] == 0, f"CONNACK refused: {body!r}"
        first, _ = read_packet(s)
        assert first == 0x90
        s.sendall(b"\xe0\x00")
        s.close()
created = time.time() - t0
print(f"{n} sessions created in {created:.1f} s; rss {rss_mib()} MiB; store {disk_mib():.1f} MiB")

# 2. A canary doing QoS 1 round trips on its own topic while the publisher works.
worst = [0.0]
canary_lost = [0]
stop = threading.Event()


def canary():
    s = open_client(b"canary")
    s.sendall(subscribe(1, b"canary/t"))
    read_packet(s)
    k = 0
    while not stop.is_set():
        k = k % 60000 + 1
        t = time.time()
        s.sendall(publish(b"canary/t", b"c%d" % k, k))
        got_ack = got_msg = False
        while not (got_ack and got_msg):
            first, body = read_packet(s)
            if first >> 4 == 4:
                got_ack = True
            elif first >> 4 == 3:
                got_msg = True
                if first & 6:
                    tl = struct.unpack(">H", body[:2])[0]
                    s.sendall(b"\x40\x02" + body[2 + tl : 4 + tl])
        worst[0] = max(worst[0], time.time() - t)
        time.sleep(0.01)
    s.close()


th = threading.Thread(target=canary, daemon=True)
th.start()
time.sleep(0.3)

# 3. The publisher.
p = open_client(b"flood-pub")
payload = b"x" * size
times = []
for k in range(1, pubs + 1):
    t = time.time()
    p.sendall(publish(b"flood/t", payload, k))
    first, _ = read_packet(p)
    assert first >> 4 == 4
    times.append(time.time() - t)
stop.set()
th.join(timeout=10)
times.sort()
print(
    f"{pubs} publishes of {size} B: median {times[len(times)//2]*1000:.0f} ms, max {times[-1]*1000:.0f} ms; "
    f"canary max round trip {worst[0]*1000:.0f} ms; rss {rss_mib()} MiB; store {disk_mib():.1f} MiB"
)

# 4. One session comes back and counts what it receives.
s = open_client(b"off0", clean=False)
s.settimeout(5)
got = 0
try:
    while got < pubs:
        first, body = read_packet(s)
        if first >> 4 == 3:
            got += 1
            tl = struct.unpack(">H", body[:2])[0]
            s.sendall(b"\x40\x02" + body[2 + tl : 4 + tl])
except (socket.timeout, ConnectionError):
    pass
print(f"returning session received {got}/{pubs}")
