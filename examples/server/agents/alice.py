"""Alice opens the conversation and ends it after her last line."""
from mfp_agent import Agent, say

LINES = [
    "Hello Bob! Can you read me through the mirror frames?",
    "Good. Every message moved our channel's ratchet one step.",
    "That is all I wanted to check. Bye!",
]

agent = Agent()
turn = 0


def on_message(msg):
    global turn
    say(f"alice heard (step {msg['step']}): {msg.get('payload')}")
    if turn >= len(LINES):
        return False
    receipt = agent.send(channel=msg["channel"], payload=LINES[turn])
    say(f"alice says (step {receipt['step']}): {LINES[turn]}")
    turn += 1
    return True


receipt = agent.send(to="bob", payload=LINES[0])
say(f"alice says (step {receipt['step']}): {LINES[0]}")
turn = 1
agent.run(on_message)
