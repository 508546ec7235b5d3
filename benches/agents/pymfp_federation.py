#!/usr/bin/env python3
"""pymfp 1.0.0's federation rate, for the `federation` section of `mfp-bench`.

    target/pymfp-venv/bin/python pymfp_federation.py [--messages N] [--size B] [--rounds R]

pymfp's runtime never writes its cross-runtime messages to the network: `send` appends the
wire bytes to `Runtime._pending_wire_messages` and `flush_pending_messages` only logs. So
the sending side here does what an embedding application has to do: after each `send`, pop
the bytes and write them, as they are, to the peer runtime's `start_federation` listener
(pymfp's TCP transport: wire messages back to back, no framing, no handshake).

- one-way: a sender process (this one) and a receiver process (this script with
  `--receive`), each with a pymfp runtime bootstrapped with the same deterministic bilateral
  state (pymfp's federation has no authenticated handshake). The sender sends N messages of
  B bytes; the receiver times its deliveries from the first to the N-th and reports
  (N - 1) / that time, as the Rust benchmark's far side does.
- ping-pong: both runtimes in this process, each with its listener; the receiving agent
  answers every message on the same channel (one shared bilateral counter: strict
  alternation, which ping-pong is). Round trip p50/p99 over R rounds.

pymfp has no way to agree on a channel id: the receiver creates its side of the channel
and replaces its random id by the sender's (as the protocol digest's interop recipe says).

Prints one JSON object on stdout.
"""

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time

from mfp import Runtime, RuntimeConfig
from mfp.core.types import ChannelId
from mfp.federation.transport import TransportConfig

DEPLOYMENT = b"mfp-bench-federation-pymfp"
PEER_AGENT = b"\x00" * 16


def runtime(instance: bytes) -> Runtime:
    return Runtime(RuntimeConfig(deployment_id=DEPLOYMENT, instance_id=instance, max_message_rate=0,
                                 max_payload_size=2 << 20))


def runtime_id_of(instance: bytes):
    rt = runtime(instance)
    rid = rt.runtime_id
    rt.shutdown()
    return rid


def cross_channel(rt: Runtime, agent, peer_instance: bytes, channel: bytes | None = None) -> ChannelId:
    """A cross-runtime channel of `agent` with the peer runtime; re-keyed to `channel` if given."""
    bc = rt.bootstrap_bilateral_deterministic(runtime_id_of(peer_instance))
    ch = rt.establish_cross_runtime_channel(agent, PEER_AGENT, bc.bilateral_id, depth=4)
    if channel is not None:
        crc = rt._cross_runtime_channels.pop(ch.value)
        crc.channel_id = ChannelId(channel)
        rt._cross_runtime_channels[channel] = crc
        ch = ChannelId(channel)
    return ch


async def listen(rt: Runtime) -> int:
    await rt.start_federation(TransportConfig(host="127.0.0.1", port=0))
    return rt._transport_server._server.sockets[0].getsockname()[1]


# ---- one-way ----------------------------------------------------------------------------

async def receive(n: int, channel: bytes) -> None:
    rt = runtime(b"far")
    times = []
    done = asyncio.Event()

    def on_message(m):
        times.append(time.perf_counter())
        if len(times) == n:
            done.set()

    bob = rt.bind_agent(on_message)
    cross_channel(rt, bob, b"near", channel)
    port = await listen(rt)
    print(port, flush=True)
    await asyncio.wait_for(done.wait(), timeout=300)
    print(json.dumps({"received": len(times), "seconds": times[-1] - times[0]}), flush=True)
    await rt.stop_federation()
    rt.shutdown()


async def one_way(n: int, size: int) -> dict:
    rt = runtime(b"near")
    alice = rt.bind_agent(lambda m: None)
    ch = cross_channel(rt, alice, b"far")
    child = subprocess.Popen(
        [sys.executable, __file__, "--receive", "--messages", str(n), "--channel", ch.value.hex()],
        stdout=subprocess.PIPE, text=True)
    port = int(child.stdout.readline())
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b"\x42" * size
    pending = rt._pending_wire_messages
    start = time.perf_counter()
    for i in range(n):
        rt.send(alice, ch, payload)
        _, wire = pending.pop()
        writer.write(wire)
        if i % 64 == 63:
            await writer.drain()
    await writer.drain()
    sent = time.perf_counter() - start
    result = json.loads(await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline))
    writer.close()
    child.wait(timeout=60)
    rt.shutdown()
    return {"one_way_msgs_per_s": (result["received"] - 1) / result["seconds"],
            "one_way_sender_msgs_per_s": n / sent}


# ---- ping-pong --------------------------------------------------------------------------

async def ping_pong(rounds: int, size: int) -> dict:
    near, far = runtime(b"near"), runtime(b"far")
    answered = asyncio.Event()
    back = {}

    def on_answer(m):
        answered.set()

    def reply(payload):
        far.send(bob, ch_far, payload)
        _, wire = far._pending_wire_messages.pop()
        back["writer"].write(wire)

    def on_request(m):
        # pymfp advances the receiving side's bilateral state only after the handler
        # returned: an answer sent from inside the handler would reuse the step it came on
        # (and fail validation on the other side). It goes right after.
        asyncio.get_running_loop().call_soon(reply, m.payload)

    alice = near.bind_agent(on_answer)
    bob = far.bind_agent(on_request)
    ch = cross_channel(near, alice, b"far")
    ch_far = cross_channel(far, bob, b"near", ch.value)
    near_port, far_port = await listen(near), await listen(far)
    _, to_far = await asyncio.open_connection("127.0.0.1", far_port)
    _, back["writer"] = await asyncio.open_connection("127.0.0.1", near_port)
    payload = b"\x17" * size
    rtts = []
    for i in range(rounds + 100):
        answered.clear()
        start = time.perf_counter()
        near.send(alice, ch, payload)
        _, wire = near._pending_wire_messages.pop()
        to_far.write(wire)
        await asyncio.wait_for(answered.wait(), timeout=10)
        if i >= 100:
            rtts.append(time.perf_counter() - start)
    rtts.sort()
    to_far.close()
    back["writer"].close()
    await near.stop_federation()
    await far.stop_federation()
    near.shutdown()
    far.shutdown()

    def pct(p):
        return rtts[min(len(rtts) - 1, round((len(rtts) - 1) * p))] * 1e6

    return {"ping_pong_p50_us": pct(0.5), "ping_pong_p99_us": pct(0.99), "ping_pong_rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2_000)
    ap.add_argument("--receive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--channel", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)
    if args.receive:
        asyncio.run(receive(args.messages, bytes.fromhex(args.channel)))
        return
    out = {"implementation": "pymfp 1.0.0", "size": args.size, "messages": args.messages}
    out.update(asyncio.run(one_way(args.messages, args.size)))
    out.update(asyncio.run(ping_pong(args.rounds, args.size)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
