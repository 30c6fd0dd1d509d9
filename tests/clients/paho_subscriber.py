#!/usr/bin/env python3
"""An MQTT subscriber that is not ours: paho-mqtt, as a dashboard or CMMS would use.

Usage: paho_subscriber.py PORT SECONDS FILTER...

Subscribes (QoS 1) on 127.0.0.1:PORT, prints "ready" once subscribed, collects messages
for SECONDS after the last one arrived, validates every payload against Forewarn's JSON
Schemas in docs/schemas (chosen by topic), and prints one JSON object:
{"messages": [[topic, payload, retained], ...], "invalid": [[topic, error], ...]}.
Exit code 3 when paho-mqtt or jsonschema is missing (the caller skips).
"""

import json
import os
import sys
import time

try:
    import jsonschema
    import paho.mqtt.client as mqtt
except ImportError as e:  # pragma: no cover
    print(f"missing python module: {e}", file=sys.stderr)
    sys.exit(3)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def schema(name):
    with open(os.path.join(ROOT, "docs", "schemas", name)) as f:
        return json.load(f)


SCHEMAS = {
    "alerts": schema("transition.schema.json"),
    "state": schema("state.schema.json"),
    "deadletter": schema("deadletter.schema.json"),
    "late": schema("deadletter.schema.json"),
}


def main():
    port, quiet_s, filters = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    messages, invalid = [], []
    last = [time.monotonic()]

    def on_message(client, userdata, msg):
        last[0] = time.monotonic()
        try:
            payload = json.loads(msg.payload)
        except ValueError as e:
            invalid.append([msg.topic, f"not JSON: {e}"])
            return
        kind = msg.topic.split("/")[1] if "/" in msg.topic else ""
        s = SCHEMAS.get(kind)
        if s is not None:
            try:
                jsonschema.validate(payload, s)
            except jsonschema.ValidationError as e:
                invalid.append([msg.topic, e.message])
        messages.append([msg.topic, payload, bool(msg.retain)])

    subscribed = []
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{os.getpid()}")
    else:  # paho-mqtt 1.x (Debian 12's python3-paho-mqtt)
        client = mqtt.Client(client_id=f"paho-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda c, u, mid, *rest: subscribed.append(mid)
    client.connect("127.0.0.1", port)
    client.subscribe([(f, 1) for f in filters])
    client.loop_start()
    deadline = time.monotonic() + 10
    while not subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready", flush=True)
    last[0] = time.monotonic()
    while time.monotonic() - last[0] < quiet_s:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"messages": messages, "invalid": invalid}), flush=True)


if __name__ == "__main__":
    main()
