"""Builds a real pymfp 1.0.0 database for the import test and prints what pymfp holds.

Usage: python make_db.py DB_PATH MASTER_KEY_HEX

Creates a pymfp Runtime with encrypted storage, binds agents, establishes channels
(one of them later closed, one quarantined), sends a few messages, bootstraps one
deterministic bilateral channel, and prints as JSON (on stdout):
the runtime id, every live channel (id, agents, local state, step, depth, status), the
agents, the bilateral row, and Sg. Everything is hex.
"""

import json
import logging
import sys

logging.disable(logging.CRITICAL)

from mfp import Runtime, RuntimeConfig  # noqa: E402
from mfp.core.types import RuntimeId, StateValue  # noqa: E402
from mfp.storage.engine import StorageConfig  # noqa: E402


def main() -> None:
    db_path = sys.argv[1]
    master_key = bytes.fromhex(sys.argv[2])
    assert len(master_key) == 32

    storage = StorageConfig(db_path=db_path, encrypt_at_rest=True, master_key=master_key)
    rt = Runtime(RuntimeConfig(deployment_id=b"import-test", instance_id=b"node-1", storage=storage))

    received = []

    def handler(msg):
        received.append(msg)

    alice = rt.bind_agent(handler)
    bob = rt.bind_agent(handler)
    carol = rt.bind_agent(handler)
    dave = rt.bind_agent(handler)

    ab = rt.establish_channel(alice, bob)
    bc = rt.establish_channel(bob, carol, depth=2)
    ac = rt.establish_channel(alice, carol, depth=8)
    doomed = rt.establish_channel(alice, dave)

    for i in range(3):
        rt.send(alice, ab, b"hello bob %d" % i)
    rt.send(bob, ab, b"hi alice")
    for i in range(2):
        rt.send(carol, bc, b"bc message %d" % i)
    rt.send(alice, ac, b"to carol")
    rt.send(alice, doomed, b"short-lived")

    rt.close_channel(doomed)
    # Not `rt.unbind_agent(dave)`: pymfp 1.0.0 then fails with "FOREIGN KEY constraint
    # failed" (the closed channel row still references dave) after it already removed the
    # agent from memory.
    rt.quarantine_channel(ac, "test")

    peer = RuntimeId(StateValue(bytes(range(32))))
    bilateral = rt.bootstrap_bilateral_deterministic(peer)

    channels = []
    for ch in rt._channels.values():
        channels.append(
            {
                "channel_id": ch.channel_id.value.hex(),
                "agent_a": ch.agent_a.value.hex(),
                "agent_b": ch.agent_b.value.hex(),
                "local_state": ch.state.local_state.data.hex(),
                "step": ch.state.step,
                "depth": ch.depth,
                "status": ch.status.value,
            }
        )
    agents = [
        {"agent_id": rec.agent_id.value.hex(), "state": rec.state.name.lower()}
        for rec in rt._agents.values()
    ]
    out = {
        "runtime_id": rt.identity.data.hex(),
        "channels": channels,
        "closed_channel": doomed.value.hex(),
        "agents": agents,
        "bilateral": {
            "bilateral_id": bilateral.bilateral_id.hex(),
            "peer": peer.value.data.hex(),
            "ratchet_state": bilateral.state.ratchet_state.data.hex(),
            "shared_prng_seed": bilateral.state.shared_prng_seed.data.hex(),
            "step": bilateral.state.step,
        },
        "sg": rt.global_state.value.data.hex(),
        "messages_delivered": len(received),
    }
    rt.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
