"""A large retained set: memory while it is published, after a restart, and while one client reads it all.

    python3 bench/retained_large.py tern PATH/TO/tern [COUNT=1000000] [SIZE=1024]
    python3 bench/retained_large.py mosquitto /usr/sbin/mosquitto [COUNT] [SIZE]

Starts the broker itself on a free port with a fresh data directory (Tern: defaults but
`max_retained` large enough for COUNT; Mosquitto 2: `persistence true`). A publisher sends COUNT
retained QoS 1 messages of SIZE bytes on distinct topics `site/N/state` (200 in flight); the script
prints the broker's RSS then and its peak while publishing; restarts it (SIGTERM, start again) and
prints how long it took to answer a CONNECT and its RSS 0.5 s and 3 s later; then one MQTT 3.1.1 client subscribes to
`site/#` at QoS 1 and reads, acknowledging each PUBLISH, until it has COUNT distinct topics or nothing
came for 30 s, and the script prints how many it got, the time, and the peak and final RSS.
BROKER_EXTRA (environment) is appended to the broker's configuration (`\\n` for a new line).
"""
import os, shutil, socket, struct, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawmqtt import Broker, Conn, Peak, disk_mib, publish_packet  # noqa: E402

kind, binary = sys.argv[1], sys.argv[2]
count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000000
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
work = tempfile.mkdtemp(prefix="tern-retained-large-")
extra = f"max_retained = {count + 1000}\n" if kind == "tern" else ""
# More configuration for the broker under test (TOML for Tern, mosquitto.conf lines).
extra += os.environ.get("BROKER_EXTRA", "").replace("\\n", "\n")
broker = Broker(kind, binary, work, extra)
broker.start()
payload = os.urandom(size)
pub = Conn(broker.port, "publisher", clean=True)
t0 = time.time()
with Peak(broker.p.pid) as peak:
    pub.publish_all(count, lambda k, pid: publish_packet(f"site/{k}/state".encode(), pid, payload, retain=True))
    secs = time.time() - t0
    pub.close()
    time.sleep(1)
print(f"{kind}: {count} retained QoS 1 messages of {size} B published in {secs:.1f} s ({count / secs:.0f}/s); "
      f"broker RSS {broker.rss()} MiB (peak {peak.mib}), data on disk {disk_mib(work):.0f} MiB", flush=True)

broker.stop()
took = broker.start()
time.sleep(0.5)
early = broker.rss()
time.sleep(2.5)
print(f"{kind}: restart: first CONNACK after {took:.2f} s; RSS {early} MiB 0.5 s later, {broker.rss()} MiB 3 s later",
      flush=True)

sub = Conn(broker.port, "reader", clean=True, timeout=30)
seen = set()
t0 = time.time()
with Peak(broker.p.pid) as peak:
    body = struct.pack(">H", 1) + struct.pack(">H", 6) + b"site/#" + b"\x01"
    sub.s.sendall(b"\x82" + bytes([len(body)]) + body)
    try:
        while len(seen) < count:
            t, rest = sub.packet()
            if t != 3:
                continue
            first, b = rest
            tl = struct.unpack(">H", b[:2])[0]
            seen.add(b[2:2 + tl])
            if first & 0x06:
                sub.s.sendall(b"\x40\x02" + b[2 + tl:4 + tl])
    except (socket.timeout, EOFError):
        pass
    secs = time.time() - t0
print(f"{kind}: a subscriber to site/# received {len(seen)} of {count} retained messages in {secs:.1f} s; "
      f"broker RSS {broker.rss()} MiB (peak {peak.mib})", flush=True)
sub.close()
broker.stop()
shutil.rmtree(work, ignore_errors=True)
