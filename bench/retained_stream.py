"""A large retained set read by one subscriber, against a broker on 127.0.0.1:PORT (process PID).

    python3 bench/retained_stream.py PORT PID [COUNT=100000] [SIZE=1024]

Publishes COUNT retained QoS 1 messages of SIZE bytes on distinct topics (`site/N/state`, 500 in
flight at a time, in rounds of 10,000: paho's message ids are 16 bits and wrap if more wait), then one MQTT 3.1.1 client subscribes to `site/#` at QoS 1 and reads, acknowledging
each PUBLISH, until nothing arrives for 5 s. Prints how many distinct retained messages it received,
how long that took, and the broker's RSS after publishing and at the end (paho-mqtt, from PyPI).
"""
import sys, threading, time

import paho.mqtt.client as mqtt

port, pid = int(sys.argv[1]), int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1024


def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024


def client(cid):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(500)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    return c


acked = threading.Semaphore(0)
pub = client("retained-publisher")
pub.on_publish = lambda *a: acked.release()
payload = b"x" * size
t0 = time.time()
for start in range(0, count, 10000):
    end = min(count, start + 10000)
    for i in range(start, end):
        pub.publish(f"site/{i}/state", payload, qos=1, retain=True)
    for _ in range(start, end):
        if not acked.acquire(timeout=60):
            sys.exit("publisher: PUBACKs stopped coming")
pub.disconnect()
pub.loop_stop()
print(f"published {count} retained messages of {size} B in {time.time() - t0:.1f} s; RSS {rss_mib()} MiB")

seen = set()
last = [time.time()]
lock = threading.Lock()


def on_message(c, userdata, msg):
    with lock:
        if msg.retain:
            seen.add(msg.topic)
        last[0] = time.time()


sub = client("retained-reader")
sub.on_message = on_message
t1 = time.time()
sub.subscribe("site/#", qos=1)
while True:
    time.sleep(0.2)
    with lock:
        done = len(seen) >= count or time.time() - last[0] > 5
    if done:
        break
elapsed = last[0] - t1
sub.disconnect()
sub.loop_stop()
print(f"received {len(seen)} of {count} retained messages in {elapsed:.1f} s; RSS {rss_mib()} MiB")
