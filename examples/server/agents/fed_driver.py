"""Sends a few lines to an agent of another runtime and prints what comes back.

It waits until the server has opened its cross-runtime channel (listed by `channels` with
a `peer_runtime`), then sends on it by channel id.
"""
import time

from mfp_agent import Agent, say

LINES = ["Hello from runtime b!", "Across two processes,", "and back again."]

agent = Agent()
deadline = time.monotonic() + 60
channel = None
while channel is None:
    remote = [c for c in agent.call("channels") if c.get("peer_runtime")]
    if remote:
        channel = remote[0]
    elif time.monotonic() > deadline:
        raise SystemExit("no cross-runtime channel after 60 s: is the other runtime running?")
    else:
        time.sleep(0.2)
say(f"driver: channel {channel['channel'][:8]} with runtime {channel['peer_runtime'][:8]}")
for line in LINES:
    receipt = agent.send(channel=channel["channel"], payload=line)
    say(f"driver sent (step {receipt['step']}): {line}")
heard = 0


def on_message(msg):
    global heard
    heard += 1
    say(f"driver heard (step {msg['step']}): {msg.get('payload')}")
    return heard < len(LINES)


agent.run(on_message)
