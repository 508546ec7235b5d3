"""A pymfp 1.0.0 runtime talking to an mfp runtime through mfp's pymfp compat peer mode.

Used by crates/mfp-federation/tests/compat_pymfp.rs, and the code docs/interop.md shows.
Only pymfp's own API is used, plus the two things pymfp 1.0.0 has no API for (PROTOCOL
§4.14): replacing the random cross-runtime channel id by the agreed one, and taking the
wire bytes out of `Runtime._pending_wire_messages` to write them to a socket.

Usage:
  compat_peer.py --me DEP/INST --peer DEP/INST --channel HEX32 --depth K --remote-agent HEX64
                 [--ceremonial MY_X25519_PRIVATE_HEX PEER_X25519_PUBLIC_HEX]
                 MODE [--connect PORT] [--count N] [--rounds R]

Without --connect, the modes that connect read the port from a line `go PORT` on stdin
(so the mfp side can start its listener after it learnt pymfp's agent id).

Modes:
  send      connect to the mfp listener, send N messages, close
  receive   listen (pymfp's start_federation), receive N messages
  pingpong  listen and connect; R request/reply rounds, the initiator alternating
            (even rounds: mfp asks, pymfp replies; odd rounds: pymfp asks, mfp replies)
  tamper    connect; genuine messages interleaved with tampered ones (see TAMPER_PLAN)

Output: JSON lines on stdout. First {"event": "ready", "agent": HEX, "port": P or null},
last {"event": "done", ...}. Anything unexpected raises (non-zero exit, traceback on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys

from mfp import Runtime, RuntimeConfig
from mfp.core.types import ChannelId, RuntimeId, StateValue
from mfp.federation.bilateral import compute_shared_secret
from mfp.federation.transport import TransportConfig
from mfp.runtime.pipeline import process_cross_runtime_outbound

TIMEOUT = 60.0


def payload(i: int) -> bytes:
    """The i-th payload of the send/receive modes (the Rust test computes the same)."""
    return f"message {i} ".encode() + bytes((i * 7 + j) % 256 for j in range(i % 97))


def request(r: int) -> bytes:
    return f"request {r}".encode()


def reply(r: int) -> bytes:
    return f"reply {r}".encode()


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class Peer:
    """One pymfp runtime with one bilateral channel and one cross-runtime channel."""

    def __init__(self, args: argparse.Namespace) -> None:
        dep, inst = args.me.split("/", 1)
        self.rt = Runtime(RuntimeConfig(deployment_id=dep.encode(), instance_id=inst.encode()))
        pdep, pinst = args.peer.split("/", 1)
        peer_id = RuntimeId(StateValue(hashlib.sha256(pdep.encode() + pinst.encode()).digest()))
        if args.ceremonial:
            my_private, peer_public = (bytes.fromhex(x) for x in args.ceremonial)
            secret = compute_shared_secret(my_private, peer_public)
            bc = self.rt.bootstrap_bilateral_ceremonial(peer_id, secret)
        else:
            bc = self.rt.bootstrap_bilateral_deterministic(peer_id)
        self.bilateral_id = bc.bilateral_id
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        # The callable runs on the event loop, inside pymfp's receive handler and BEFORE
        # pymfp advances the shared chain: never send from here, hand the message over.
        self.agent = self.rt.bind_agent(lambda m: self.inbox.put_nowait(m.payload))
        random_id = self.rt.establish_cross_runtime_channel(
            self.agent, bytes.fromhex(args.remote_agent), bc.bilateral_id, depth=args.depth,
        )
        # pymfp has no way to agree on a channel id: replace its random id by the agreed one.
        self.channel = ChannelId(bytes.fromhex(args.channel))
        crc = self.rt._cross_runtime_channels.pop(random_id.value)
        crc.channel_id = self.channel
        self.rt._cross_runtime_channels[self.channel.value] = crc
        self.depth = args.depth
        self.writer: asyncio.StreamWriter | None = None

    @property
    def step(self) -> int:
        return self.rt._bilateral_channels[self.bilateral_id].state.step

    def state_hash(self) -> str:
        s = self.rt._bilateral_channels[self.bilateral_id].state
        return hashlib.sha256(s.ratchet_state.data + s.shared_prng_seed.data).hexdigest()

    async def listen(self) -> int:
        await self.rt.start_federation(TransportConfig(host="127.0.0.1", port=0))
        return self.rt._transport_server._server.sockets[0].getsockname()[1]

    async def connect(self, port: int | None) -> None:
        if port is None:
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            word, _, value = line.strip().partition(" ")
            assert word == "go", f"expected `go PORT` on stdin, got {line!r}"
            port = int(value)
        _, self.writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)

    async def write(self, wire: bytes) -> None:
        assert self.writer is not None
        self.writer.write(wire)
        await asyncio.wait_for(self.writer.drain(), TIMEOUT)

    def send(self, data: bytes) -> bytes:
        """pymfp's own send; returns the wire bytes it queued (and committed: the shared
        chain has advanced)."""
        self.rt.send(self.agent, self.channel, data)
        _peer, wire = self.rt._pending_wire_messages.pop(0)
        return wire

    def uncommitted(self, data: bytes) -> bytes:
        """A genuine wire message at the current step WITHOUT advancing pymfp's chain."""
        bc = self.rt._bilateral_channels[self.bilateral_id]
        res = process_cross_runtime_outbound(
            sender=self.agent, channel_id=self.channel, payload=data,
            bilateral_state=bc.state, depth=self.depth, config=RuntimeConfig(),
            sender_runtime=self.rt.identity.data[:16],
        )
        return res.wire_bytes

    async def receive(self) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), TIMEOUT)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
        await self.rt.stop_federation()
        self.rt.shutdown()


def flip(wire: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(wire)
    b[offset] ^= 1 << bit
    return bytes(b)


HEADER = 64


async def tamper(p: Peer) -> list[dict]:
    """Genuine messages interleaved with tampered ones. Returns what was sent, in order,
    with the outcome the mfp side must report."""
    sent = []

    async def put(kind: str, wire: bytes, expect: str, data: bytes = b"") -> None:
        await p.write(wire)
        sent.append({"kind": kind, "expect": expect, "payload": data.hex()})

    frame_bytes = 16 * p.depth
    first = p.send(b"genuine 0")
    await put("genuine", first, "delivered", b"genuine 0")
    # Tampered copies of messages built at the current step WITHOUT committing pymfp's
    # chain: refused by mfp, and neither side advances, so the channel goes on.
    await put("frame bit", flip(p.uncommitted(b"t1"), HEADER + 5, 3), "frame")
    await put("ciphertext bit", flip(p.uncommitted(b"t2"), HEADER + frame_bytes + 1, 0), "decode")
    await put("header step", flip(p.uncommitted(b"t3"), 39, 1), "step")
    await put("genuine", p.send(b"genuine 1"), "delivered", b"genuine 1")
    # A replay of an earlier genuine message: its step is behind the chain's.
    await put("replay", first, "step")
    await put("genuine", p.send(b"genuine 2"), "delivered", b"genuine 2")
    # A tampered copy of what pymfp's own send produced: pymfp's chain has advanced, mfp's
    # has not. From here on every message is refused (in both directions) until the two
    # states are repaired out of band: pymfp 1.0.0 has no recovery on the wire.
    await put("ciphertext bit after pymfp committed", flip(p.send(b"lost"), HEADER + frame_bytes, 7), "decode")
    await put("genuine after divergence", p.send(b"genuine 4"), "step", b"genuine 4")
    return sent


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--me", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--channel", required=True)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--remote-agent", required=True)
    ap.add_argument("--ceremonial", nargs=2, metavar=("MY_PRIVATE", "PEER_PUBLIC"))
    ap.add_argument("mode", choices=["send", "receive", "pingpong", "tamper"])
    ap.add_argument("--connect", type=int)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()

    p = Peer(args)
    port = await p.listen() if args.mode in ("receive", "pingpong") else None
    emit(event="ready", agent=p.agent.value.hex(), port=port)

    if args.mode == "send":
        await p.connect(args.connect)
        for i in range(args.count):
            await p.write(p.send(payload(i)))
        emit(event="done", sent=args.count, step=p.step, state_hash=p.state_hash())
    elif args.mode == "receive":
        got = [await p.receive() for _ in range(args.count)]
        assert got == [payload(i) for i in range(args.count)], "pymfp received other payloads"
        emit(event="done", received=len(got), step=p.step, state_hash=p.state_hash())
    elif args.mode == "pingpong":
        await p.connect(args.connect)
        for r in range(args.rounds):
            if r % 2 == 0:
                got = await p.receive()
                assert got == request(r), f"round {r}: got {got!r}"
                await p.write(p.send(reply(r)))
            else:
                await p.write(p.send(request(r)))
                got = await p.receive()
                assert got == reply(r), f"round {r}: got {got!r}"
        emit(event="done", rounds=args.rounds, step=p.step, state_hash=p.state_hash())
    elif args.mode == "tamper":
        await p.connect(args.connect)
        sent = await tamper(p)
        emit(event="done", sent=sent, step=p.step)
    await p.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # a clear line for the test's failure message, then the traceback
        print(f"compat_peer.py failed: {e!r}", file=sys.stderr)
        raise
