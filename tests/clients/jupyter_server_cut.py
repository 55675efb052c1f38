"""A cell run through jupyter_server's websocket, as JupyterLab runs it, while the link to the
remote is cut: the cell's reply and every line it printed arrive on the same websocket.

Usage: python jupyter_server_cut.py KERNEL_NAME

Prints "cut" once the cell runs, and expects the caller to cut the link then and write a line
on stdin once the link is back. Prints one "ok: ..." line per step; exits 1 with a "FAILED: ..."
line on stderr otherwise. Shares the server and websocket helpers of jupyter_server_restart.py.
"""
import asyncio
import json
import sys
import time

from jupyter_server_restart import Failure, bounded, ok, run_driver

CELL = "import time\nfor i in range(12):\n    print(i, flush=True)\n    time.sleep(1)"
EXPECTED = "".join(f"{i}\n" for i in range(12))
CELL_TIMEOUT = 120.0


async def run_through_cut(notebook):
    msg_id = await notebook.send("execute_request", {
        "code": CELL, "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True,
    })
    print("cut", flush=True)
    link_back = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    reply, idle, output = None, False, ""
    deadline = time.monotonic() + CELL_TIMEOUT
    while reply is None or not idle:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"after {CELL_TIMEOUT:g} s: reply {reply is not None}, idle {idle}, output {output!r}")
        raw = await bounded("the cell's messages", notebook.conn.read_message(), left)
        if raw is None:
            raise Failure("the websocket closed during the cut")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            output += msg["content"]["text"]
        elif kind == "execute_reply":
            reply = msg["content"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    await bounded("the caller's word that the link is back", link_back)
    if reply["status"] != "ok":
        raise Failure(f"execute_reply {reply}")
    ok(f"the cell's reply arrived through the cut (execution count {reply['execution_count']})")
    if output != EXPECTED:
        raise Failure(f"the cell's output: {output!r}")
    ok("all twelve lines arrived, in order, once")


async def drive(server, kernel_name):
    await bounded("jupyter_server start", server.wait_ready())
    kernel = await bounded("POST /api/kernels", server.request("POST", "/api/kernels", {"name": kernel_name}))
    kernel_id = kernel["id"]
    notebook = await bounded("websocket", server.websocket(kernel_id, "notebook"))
    try:
        await notebook.execute("print('before')", "before")
        ok("the notebook's websocket runs code")
        await run_through_cut(notebook)
        await notebook.execute("print('after')", "after")
        ok("and goes on after it")
    finally:
        notebook.close()
    await bounded("DELETE kernel", server.request("DELETE", f"/api/kernels/{kernel_id}"))
    ok("kernel deleted")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run_driver("jupyter-server-cut-", drive, sys.argv[1])


if __name__ == "__main__":
    main()
