"""Memory given back after an attack: ROUNDS x N connections, each with a will of SIZE bytes,
connected then dropped, against a broker on 127.0.0.1:PORT whose process id is PID.

    python3 bench/will_rounds.py PORT PID ROUNDS N SIZE [WAIT_S]

Prints the broker's RSS (MiB) at the start, at the peak and 1 s after each round (with how long
after the round's close it first came within 64 MiB of the start), and WAIT_S seconds (default
3) after the last, with the time it took to come within 64 MiB of the start.
"""
import socket, struct, sys, time
port, pid, rounds, n, size = map(int, sys.argv[1:6])
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
def connect(cid):
    will_topic = b"wills/" + cid
    payload = b"w" * size
    body = b"\x00\x04MQTT\x04" + bytes([0x02 | 0x04]) + b"\x00\x00"
    body += struct.pack(">H", len(cid)) + cid
    body += struct.pack(">H", len(will_topic)) + will_topic
    body += struct.pack(">H", len(payload)) + payload
    return b"\x10" + varint(len(body)) + body
start = rss()
print("start", start)
for r in range(rounds):
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(connect(b"r%d-%d" % (r, i)))
        socks.append(s)
    for s in socks:
        s.recv(4)
    peak = rss()
    for s in socks:
        s.close()
    t0, back = time.time(), None
    while time.time() - t0 < 1.0:
        if back is None and rss() - start <= 64:
            back = time.time() - t0
        time.sleep(0.05)
    last = back
    back = "not within 1 s" if back is None else f"{back:.2f} s"
    print(f"round {r}: peak {peak} after {rss()} (within 64 MiB of start after {back})")
wait = float(sys.argv[6]) if len(sys.argv) > 6 else 3
t0 = time.time()
back = None
while time.time() - t0 < wait:
    if back is None and rss() - start <= 64:
        back = time.time() - t0
    time.sleep(0.25)
end = rss()
if back is None and end - start <= 64:
    back = wait
# Counted from the last round's close (which was followed by 1 s of sampling).
back = last if last is not None else None if back is None else back + 1.0
print("end", end)
print("within 64 MiB of start", "never" if back is None else f"{back:.2f} s after the last round's close")
