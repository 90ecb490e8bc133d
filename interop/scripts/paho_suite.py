"""paho-mqtt scenarios against a broker: python3 paho_suite.py HOST PORT SCENARIO.

Each scenario prints "ok SCENARIO" and exits 0, or raises (exit 1) with the reason.
Every wait is bounded. The transport comes from the environment: TERN_TRANSPORT
(tcp, tls, ws or wss; default tcp), TERN_CAFILE (the CA for tls/wss) and
TERN_WS_PATH (default /mqtt).
"""
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT, SCENARIO = sys.argv[1], int(sys.argv[2]), sys.argv[3]
WAIT = 10.0
TRANSPORT = os.environ.get("TERN_TRANSPORT", "tcp")


class Peer:
    """A paho client that records what it receives."""

    def __init__(self, client_id, v5, clean=True, expiry=None, will=None, will_delay=None):
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        if TRANSPORT in ("ws", "wss"):
            kwargs["transport"] = "websockets"
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kwargs)
        if TRANSPORT in ("ws", "wss"):
            self.c.ws_set_options(path=os.environ.get("TERN_WS_PATH", "/mqtt"))
        if TRANSPORT in ("tls", "wss"):
            self.c.tls_set(ca_certs=os.environ["TERN_CAFILE"])
        self.messages = []
        self.cond = threading.Condition()
        self.connack = None
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        if will:
            props = None
            if v5 and will_delay is not None:
                props = Properties(PacketTypes.WILLMESSAGE)
                props.WillDelayInterval = will_delay
            self.c.will_set(will[0], will[1], qos=1, properties=props)
        props = None
        if v5 and expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
        if v5:
            self.c.connect(HOST, PORT, 30, clean_start=clean, properties=props)
        else:
            self.c.connect(HOST, PORT, 30)
        self.c.loop_start()
        self.wait_for(lambda: self.connack is not None, "CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = (flags.session_present, reason_code)
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_for(self, pred, what):
        deadline = time.time() + WAIT
        with self.cond:
            while not pred():
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("timed out waiting for " + what)
                self.cond.wait(left)

    def wait_messages(self, n):
        self.wait_for(lambda: len(self.messages) >= n, "%d messages (have %d)" % (n, len(self.messages)))
        return self.messages[:n]

    def subscribe(self, topic, qos, **opts):
        if self.v5:
            options = mqtt.SubscribeOptions(qos=qos, **opts)
            result, mid = self.c.subscribe(topic, options=options)
        else:
            result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        time.sleep(0.2)

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(WAIT)
        assert info.is_published(), "publish not acknowledged"

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drop the TCP connection without DISCONNECT."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def qos_round_trips(v5):
    sub = Peer("paho-sub", v5)
    sub.subscribe("paho/#", 2)
    pub = Peer("paho-pub", v5)
    for qos in (0, 1, 2):
        pub.publish("paho/q%d" % qos, b"payload-%d" % qos, qos)
    msgs = sub.wait_messages(3)
    got = sorted((m.topic, m.payload, m.qos) for m in msgs)
    assert got == [("paho/q0", b"payload-0", 0), ("paho/q1", b"payload-1", 1), ("paho/q2", b"payload-2", 2)], got
    if v5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("a", "1"), ("b", "2")]
        props.ContentType = "text/plain"
        props.ResponseTopic = "paho/reply"
        props.CorrelationData = b"\x00\x01"
        pub.publish("paho/props", b"p", 1, properties=props)
        m = sub.wait_messages(4)[3]
        assert m.properties.UserProperty == [("a", "1"), ("b", "2")], m.properties
        assert m.properties.ContentType == "text/plain"
        assert m.properties.ResponseTopic == "paho/reply"
        assert m.properties.CorrelationData == b"\x00\x01"
    sub.close()
    pub.close()


def persistent_v311():
    dev = Peer("paho-persist", False, clean=False)
    dev.subscribe("persist/#", 1)
    dev.close()
    pub = Peer("paho-pub", False)
    for i in range(5):
        pub.publish("persist/x", b"m%d" % i, 1)
    dev = Peer("paho-persist", False, clean=False)
    assert dev.connack[0], "session present expected"
    msgs = dev.wait_messages(5)
    assert [m.payload for m in msgs] == [b"m%d" % i for i in range(5)], [m.payload for m in msgs]
    dev.close()
    pub.close()


def will_v5():
    watcher = Peer("paho-watch", True)
    watcher.subscribe("will/#", 1)
    # Will without delay: sent as soon as the connection drops.
    doomed = Peer("paho-doomed", True, will=("will/now", b"gone"))
    doomed.kill()
    assert watcher.wait_messages(1)[0].payload == b"gone"
    # Will with a 1 s delay and a session that outlives it.
    late = Peer("paho-late", True, clean=True, expiry=30, will=("will/late", b"late"), will_delay=1)
    started = time.time()
    late.kill()
    m = watcher.wait_messages(2)[1]
    assert m.payload == b"late"
    assert time.time() - started >= 0.8, "will delay not honoured"
    watcher.close()


def shared_v5():
    a = Peer("paho-a", True)
    b = Peer("paho-b", True)
    a.subscribe("$share/workers/jobs/+", 1)
    b.subscribe("$share/workers/jobs/+", 1)
    pub = Peer("paho-pub", True)
    for i in range(20):
        pub.publish("jobs/%d" % i, b"j%d" % i, 1)
    deadline = time.time() + WAIT
    while len(a.messages) + len(b.messages) < 20 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    total = len(a.messages) + len(b.messages)
    assert total == 20, "each job exactly once, got %d" % total
    assert len(a.messages) > 0 and len(b.messages) > 0, (len(a.messages), len(b.messages))
    for p in (a, b, pub):
        p.close()


def retain_nolocal_v5():
    pub = Peer("paho-ret", True)
    pub.publish("ret/t", b"kept", 1, retain=True)
    sub = Peer("paho-late", True)
    sub.subscribe("ret/#", 1)
    m = sub.wait_messages(1)[0]
    assert m.retain and m.payload == b"kept"
    echo = Peer("paho-echo", True)
    echo.subscribe("chat", 0, noLocal=True)
    echo.publish("chat", b"mine", 0)
    other = Peer("paho-other", True)
    other.publish("chat", b"theirs", 0)
    got = echo.wait_messages(1)
    time.sleep(0.3)
    assert [m.payload for m in echo.messages] == [b"theirs"], [m.payload for m in echo.messages]
    pub.publish("ret/t", b"", 1, retain=True)
    for p in (pub, sub, echo, other):
        p.close()


SCENARIOS = {
    "qos_v311": lambda: qos_round_trips(False),
    "qos_v5": lambda: qos_round_trips(True),
    "persistent_v311": persistent_v311,
    "will_v5": will_v5,
    "shared_v5": shared_v5,
    "retain_nolocal_v5": retain_nolocal_v5,
}

SCENARIOS[SCENARIO]()
print("ok " + SCENARIO)
