"""Bob answers whatever Alice says, and leaves when she says bye."""
from mfp_agent import Agent, say

REPLIES = [
    "Loud and clear, Alice.",
    "And nobody else could have produced those frames.",
    "Bye, Alice!",
]

agent = Agent()
turn = 0


def on_message(msg):
    global turn
    say(f"bob heard (step {msg['step']}): {msg.get('payload')}")
    reply = REPLIES[min(turn, len(REPLIES) - 1)]
    receipt = agent.send(channel=msg["channel"], payload=reply)
    say(f"bob says (step {receipt['step']}): {reply}")
    turn += 1
    return turn < len(REPLIES)


agent.run(on_message)
