"""A minimal mfp-server subprocess agent library: Python 3 standard library only.

The server speaks JSON-RPC 2.0 with the agent, one JSON object per line: it calls the
agent's `deliver` for each message; the agent calls `send`, `channels` and `status`.
stdout carries the protocol only; print anything else to stderr (it goes to the server log).
"""
import json
import sys


class Agent:
    def __init__(self):
        self._next_id = 1
        self._queued = []  # deliver requests that arrived while we waited for a response

    def _write(self, obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def _read(self):
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return json.loads(line)

    def call(self, method, **params):
        """Calls one of the server's methods and returns its result; raises on an error."""
        my_id = self._next_id
        self._next_id += 1
        self._write({"jsonrpc": "2.0", "id": my_id, "method": method, "params": params})
        while True:
            msg = self._read()
            if msg.get("method") is not None:
                self._queued.append(msg)
            elif msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"].get("message", "error"))
                return msg.get("result")

    def send(self, to=None, channel=None, payload=""):
        if channel is not None:
            return self.call("send", channel=channel, payload=payload)
        return self.call("send", to=to, payload=payload)

    def run(self, on_message):
        """Calls on_message(params) for each delivered message until stdin closes.
        Return False from on_message to stop after acknowledging the message."""
        try:
            while True:
                msg = self._queued.pop(0) if self._queued else self._read()
                if msg.get("method") == "deliver":
                    keep_going = on_message(msg.get("params", {}))
                    self._write({"jsonrpc": "2.0", "id": msg.get("id"), "result": {}})
                    if keep_going is False:
                        return
                elif "id" in msg and msg.get("method") is not None:
                    self._write({"jsonrpc": "2.0", "id": msg["id"],
                                 "error": {"code": -32601, "message": "method not found"}})
        except EOFError:
            return


def say(text):
    print(text, file=sys.stderr, flush=True)
