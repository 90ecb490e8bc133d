"""Persistent sessions away while N messages are published for them: memory, restart, delivery.

    python3 bench/offline_queue.py tern PATH/TO/tern [N=200000] [SIZE=1024] [SESSIONS=1]
    python3 bench/offline_queue.py mosquitto /usr/sbin/mosquitto [N] [SIZE] [SESSIONS]

Starts the broker itself on a free port with a fresh data directory (Tern: `max_offline_messages`
and `max_offline_bytes` large enough for N; Mosquitto: `persistence true`, `max_queued_messages 0`
and `max_queued_bytes 0`, i.e. no limit). SESSIONS clients `away0`... (MQTT 3.1.1, clean session 0)
each subscribe to `q/I` at QoS 1 and leave; a publisher sends N QoS 1 messages of SIZE bytes (200 in
flight), message K to `q/(K mod SESSIONS)`. Prints the broker's RSS then (and its peak while
publishing); restarts the broker (SIGTERM, start again) and prints how long it took to answer a
CONNECT and its RSS (0.5 s and 3 s later); then the sessions return one after the other and the script
counts the messages each gets (and whether they are in order) and prints the peak and final RSS (at once
and 3 s later: jemalloc gives freed pages back after `dirty_decay_ms`, 1 s).
"""
import os, shutil, socket, struct, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawmqtt import Broker, Conn, Peak, disk_mib, publish_packet  # noqa: E402

kind, binary = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
sessions = int(sys.argv[5]) if len(sys.argv) > 5 else 1
work = tempfile.mkdtemp(prefix="tern-offline-queue-")
per = (n + sessions - 1) // sessions
if kind == "tern":
    extra = (f"max_offline_messages = {per + 1000}\nmax_offline_bytes = {(per + 1000) * size * 2}\n"
             f"max_store_bytes = {64 << 30}\nmax_sessions = {sessions + 100}\nmax_connect_rate = 1000000\n")
else:
    extra = "max_queued_messages 0\nmax_queued_bytes 0\n"
broker = Broker(kind, binary, work, extra)
broker.start()
for i in range(sessions):
    away = Conn(broker.port, f"away{i}", clean=False)
    away.subscribe(f"q/{i}")
    away.close()
pub = Conn(broker.port, "publisher", clean=True)
payload = os.urandom(size)
topics = [f"q/{i}".encode() for i in range(sessions)]
t0 = time.time()
with Peak(broker.p.pid) as peak:
    pub.publish_all(n, lambda k, pid: publish_packet(
        topics[k % sessions], pid, struct.pack(">Q", k // sessions) + payload[8:]))
    pub_secs = time.time() - t0
    pub.close()
    time.sleep(1)
print(f"{kind}: {n} QoS 1 messages of {size} B for {sessions} offline session(s): published in {pub_secs:.1f} s "
      f"({n / pub_secs:.0f}/s); broker RSS {broker.rss()} MiB (peak {peak.mib}), data on disk {disk_mib(work):.0f} MiB")

broker.stop()
took = broker.start()
time.sleep(0.5)
early = broker.rss()
time.sleep(2.5)
print(f"{kind}: restart: first CONNACK after {took:.2f} s; RSS {early} MiB 0.5 s later, {broker.rss()} MiB 3 s later")

t0 = time.time()
got, in_order = 0, True
with Peak(broker.p.pid) as peak:
    for i in range(sessions):
        expect = n // sessions + (1 if i < n % sessions else 0)
        away = Conn(broker.port, f"away{i}", clean=False, timeout=30)
        mine, last = 0, -1
        try:
            while mine < expect:
                t, rest = away.packet()
                if t != 3:
                    continue
                first, body = rest
                tl = struct.unpack(">H", body[:2])[0]
                pid = body[2 + tl:4 + tl]
                k = struct.unpack(">Q", body[4 + tl:12 + tl])[0]
                in_order &= k == last + 1
                last = k
                mine += 1
                away.s.sendall(b"\x40\x02" + pid)
        except (socket.timeout, EOFError):
            pass
        got += mine
        away.close()
secs = time.time() - t0
at_end = broker.rss()
time.sleep(3)
print(f"{kind}: the sessions came back: received {got} of {n} in {secs:.1f} s, in order: {in_order}; "
      f"broker RSS {at_end} MiB (peak {peak.mib}), {broker.rss()} MiB 3 s later")
broker.stop()
shutil.rmtree(work, ignore_errors=True)
