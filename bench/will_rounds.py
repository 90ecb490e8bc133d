"""Memory given back after an attack: ROUNDS x N connections, each with a will of SIZE bytes,
connected then dropped, against a broker on 127.0.0.1:PORT whose process id is PID.

    python3 bench/will_rounds.py PORT PID ROUNDS N SIZE [WAIT_S]

Prints the broker's RSS (MiB) at the start, at the peak and 1 s after each round, and WAIT_S
seconds (default 3) after the last.
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
print("start", rss())
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
    time.sleep(1.0)
    print(f"round {r}: peak {peak} after {rss()}")
time.sleep(float(sys.argv[6]) if len(sys.argv) > 6 else 3)
print("end", rss())
