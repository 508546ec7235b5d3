"""An echo agent for the server benchmark (standard library only).

Sends every payload back on the channel it came on, then answers the deliver; exits after
the payload "bye". Speaks the server's JSON-RPC, one object per line (docs/agents.md).
"""

import json
import sys

next_id = 1
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("method") != "deliver":
        continue  # responses to our sends
    params = msg["params"]
    bye = params.get("payload") == "bye"
    if not bye:
        send = {"jsonrpc": "2.0", "id": next_id, "method": "send",
                "params": {"channel": params["channel"], "payload": params["payload"]}}
        next_id += 1
        sys.stdout.write(json.dumps(send) + "\n")
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {}}) + "\n")
    sys.stdout.flush()
    if bye:
        break
