"""An MCP host we did not write: the official Python MCP SDK, against mfp-server.

Usage:
  mcp_client.py stdio SERVER_BINARY CONFIG AGENT
  mcp_client.py http URL TOKEN

Initialises, lists the tools, sends to the builtin echo agent, receives the reply through
mfp_receive (after a notification that the inbox changed), then checks typed errors.
Prints one line per step; exits non-zero on any failure. Bounded in time.
"""

import asyncio
import sys
import warnings

import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

TIMEOUT = 90.0

# resources/subscribe is deprecated from 2026-07-28 on; the server serves up to 2025-11-25.
warnings.filterwarnings("ignore", message="resources/subscribe")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def flow(target):
    updated = asyncio.Event()

    async def on_message(message):
        if isinstance(message, types.ResourceUpdatedNotification) and message.params.uri == "mfp://inbox":
            updated.set()

    async with Client(target, message_handler=on_message, mode="auto") as client:
        print("initialised", client.protocol_version, client.server_info.name if client.server_info else "?")
        tools = await client.list_tools()
        names = sorted(t.name for t in tools.tools)
        check(names == ["mfp_channels", "mfp_receive", "mfp_send", "mfp_status"], f"tools: {names}")
        print("tools", names)

        channels = await client.call_tool("mfp_channels", {})
        peers = [c["peer_name"] for c in channels.structured_content["channels"]]
        check(peers == ["echo"], f"peers: {peers}")

        await client.subscribe_resource("mfp://inbox")
        receipt = await client.call_tool("mfp_send", {"to": "echo", "text": "hello from python"})
        check(not receipt.is_error, f"send failed: {receipt}")
        print("sent", receipt.structured_content["message_id"])

        await asyncio.wait_for(updated.wait(), 30)
        print("notified")
        got = await client.call_tool("mfp_receive", {"wait_seconds": 30})
        msgs = got.structured_content["messages"]
        check(len(msgs) == 1, f"received: {got}")
        check(msgs[0]["text"] == "hello from python", f"text: {msgs[0]}")
        check(msgs[0]["sender_name"] == "echo", f"sender: {msgs[0]}")
        print("received", msgs[0]["text"])

        # Typed errors; the server keeps serving.
        try:
            await client.call_tool("mfp_teleport", {})
            raise AssertionError("unknown tool accepted")
        except MCPError as e:
            check(e.code == -32602, f"unknown tool code {e.code}")
        for args, code in [
            ({"to": "echo", "text": 5}, "invalid_arguments"),
            ({"to": "echo", "text": "x" * 65}, "payload_too_large"),
            ({"to": "other", "text": "x"}, "unknown_peer"),
        ]:
            r = await client.call_tool("mfp_send", args)
            check(r.is_error, f"accepted: {args}")
            check(r.structured_content["error"]["code"] == code, f"{args}: {r.structured_content}")
        print("typed errors")

        status = await client.call_tool("mfp_status", {})
        check(status.structured_content["messages_sent"] == 1, f"status: {status.structured_content}")
        print("status", status.structured_content["state"])


def main():
    mode = sys.argv[1]
    if mode == "stdio":
        binary, config, agent = sys.argv[2:5]
        target = StdioServerParameters(command=binary, args=["mcp", "--config", config, "--agent", agent])
    elif mode == "http":
        url, token = sys.argv[2:4]
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        target = streamable_http_client(url, http_client=http)
    else:
        raise SystemExit(f"unknown mode {mode}")
    asyncio.run(asyncio.wait_for(flow(target), TIMEOUT))
    print("OK")


if __name__ == "__main__":
    main()
