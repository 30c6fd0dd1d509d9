"""A Sparkplug B edge node that is not Forewarn's: payloads built with Eclipse Tahu's
generated protobuf module (as shipped by the PyPI package mqtt-spb-wrapper), published
with paho-mqtt. It sends, on group Plant1, edge node edge1:

  DDATA for motor2 before any birth, NBIRTH (bdSeq 5, its will is the matching NDEATH),
  DBIRTH of motor1 (aliases 1 'Motor/Bearing Temp' Double, 2 'speed' Int32), DDATA by
  alias for i = 1..12 (seq 6 skipped before i = 6: a gap), DDATA with an undeclared
  alias, DDATA for i = 25;

prints each rebirth command it receives ("NCMD <metric>=<value>") and "DONE", then
waits to be killed (the broker then publishes its will). Exit 77 when a module is
missing. Usage: sparkplug_edge.py PORT BASE_MS
"""

import sys
import time

try:
    import paho.mqtt.client as mqtt
    from mqtt_spb_wrapper.spb_protobuf.sparkplug_b_pb2 import Payload
except ImportError as e:  # pragma: no cover
    print(f"SKIP {e}", flush=True)
    sys.exit(77)

DOUBLE, INT32, INT64, BOOLEAN = 10, 3, 4, 11
GROUP, NODE = "Plant1", "edge1"
port, base = int(sys.argv[1]), int(sys.argv[2])


def payload(seq, metrics, ts=None):
    p = Payload()
    p.timestamp = ts if ts is not None else base
    if seq is not None:
        p.seq = seq
    for name, alias, dtype, value, mts in metrics:
        m = p.metrics.add()
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        if dtype is not None:
            m.datatype = dtype
        if mts is not None:
            m.timestamp = mts
        if dtype == DOUBLE or isinstance(value, float):
            m.double_value = value
        elif dtype == BOOLEAN:
            m.boolean_value = value
        elif dtype == INT64:
            m.long_value = value
        else:
            m.int_value = value
    return p.SerializeToString()


def topic(kind, device=None):
    t = f"spBv1.0/{GROUP}/{kind}/{NODE}"
    return t if device is None else f"{t}/{device}"


def on_message(client, userdata, msg):
    p = Payload()
    p.ParseFromString(msg.payload)
    for m in p.metrics:
        print(f"NCMD {m.name}={m.boolean_value}", flush=True)


if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spb-edge1")
else:
    client = mqtt.Client(client_id="spb-edge1")
client.on_message = on_message
# The will: this session's NDEATH, bdSeq 5 like the NBIRTH below.
client.will_set(topic("NDEATH"), payload(None, [("bdSeq", None, INT64, 5, None)]), qos=1)
client.connect("127.0.0.1", port)
client.loop_start()
client.subscribe(topic("NCMD"), qos=1)
time.sleep(0.3)


def send(t, body):
    client.publish(t, body, qos=1).wait_for_publish()


# Data from a device whose node was never born: refused, rebirth requested.
send(topic("DDATA", "motor2"), payload(0, [(None, 1, None, 1.0, base)]))
send(topic("NBIRTH"), payload(0, [("bdSeq", None, INT64, 5, None),
                                  ("Node Control/Rebirth", None, BOOLEAN, False, None)]))
send(topic("DBIRTH", "motor1"), payload(1, [("Motor/Bearing Temp", 1, DOUBLE, 40.0, base),
                                            ("speed", 2, INT32, 1000, base)]))
seq = 2
for i in range(1, 13):
    if i == 6:
        seq += 1  # a lost message: the gap
        time.sleep(0.5)  # past the rebirth rate limit
    send(topic("DDATA", "motor1"), payload(seq, [(None, 1, None, 40.0 + i * 0.5, base + i * 1000),
                                                 (None, 2, None, 1000 + i, base + i * 1000)]))
    seq += 1
send(topic("DDATA", "motor1"), payload(seq, [(None, 99, None, 1.0, base + 13_000)]))
seq += 1
send(topic("DDATA", "motor1"), payload(seq, [(None, 1, None, 52.0, base + 25_000),
                                             (None, 2, None, 1025, base + 25_000)]))
print("DONE", flush=True)
while True:
    time.sleep(1)
