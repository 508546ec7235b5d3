"""Test agent for mfp-server's end-to-end tests (Python 3 standard library only).

MODE=client    sends COUNT messages "msg-<i>" to the agent named TO, logs every reply;
               with LINGER set, ignores the end of stdin (so shutdown must signal it).
MODE=recorder  logs "recorder <pid> got <payload>" for each message (followed by
               " redelivered" when the server flags it so).
MODE=deaf      never reads stdin nor answers (a stuck agent).
MODE=garbage   writes invalid lines (garbage, a HUGE_MB line, an unknown method) and logs
               the error codes it got back, then checks the server still answers status.
"""
import json
import os
import sys
import time

next_id = 1
queued = []


def write(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(text):
    print(text, file=sys.stderr, flush=True)


def read():
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return json.loads(line)


def call(method, **params):
    global next_id
    my_id = next_id
    next_id += 1
    write({"jsonrpc": "2.0", "id": my_id, "method": method, "params": params})
    while True:
        msg = read()
        if msg.get("method") is not None:
            queued.append(msg)
        elif msg.get("id") == my_id:
            return msg


def serve(on_message):
    try:
        while True:
            msg = queued.pop(0) if queued else read()
            if msg.get("method") == "deliver":
                on_message(msg["params"])
                write({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
    except EOFError:
        if os.environ.get("LINGER"):
            log("client ignores the end of stdin")
            time.sleep(60)


mode = os.environ.get("MODE")
pid = os.getpid()
if mode == "client":
    for i in range(int(os.environ.get("COUNT", "1"))):
        r = call("send", to=os.environ["TO"], payload=f"msg-{i}")
        if "error" in r:
            log(f"client send failed: {r['error']}")
    log("client sent all")
    serve(lambda p: log(f"client got {p.get('payload')} step {p['step']}"))
elif mode == "recorder":
    log(f"recorder {pid} started")
    serve(lambda p: log(f"recorder {pid} got {p.get('payload')}" + (" redelivered" if p.get("redelivered") else "")))
elif mode == "deaf":
    log(f"deaf {pid} started")
    time.sleep(60)
elif mode == "garbage":
    codes = []
    sys.stdout.write("this is not json\n")
    sys.stdout.flush()
    codes.append(read()["error"]["code"])
    huge = int(os.environ.get("HUGE_MB", "100"))
    chunk = "x" * (1 << 20)
    for _ in range(huge):
        sys.stdout.write(chunk)
    sys.stdout.write("\n")
    sys.stdout.flush()
    codes.append(read()["error"]["code"])
    codes.append(call("frobnicate")["error"]["code"])
    codes.append(call("send", to="nobody", payload="x")["error"]["code"])
    state = call("status")["result"]["state"]
    log(f"garbage agent ok: codes={codes} state={state}")
    serve(lambda p: None)
