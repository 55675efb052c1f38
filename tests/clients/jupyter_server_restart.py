"""Drives a kernel through a headless jupyter_server as JupyterLab does, across a restart.

Usage: python jupyter_server_restart.py KERNEL_NAME

The kernelspec comes from $JUPYTER_DATA_DIR (set by the caller); the server's runtime dir,
config dir and HOME are temporary. Two websockets on the kernel play a notebook and a console.
The check that matters: after POST .../restart, code sent on the websockets that were open all
along must produce both its execute_reply and its stream output. jupyter_server answers the
restart before the new kernel is up, and each websocket's ZMQ sockets reconnect on their own
(the shell one queues requests meanwhile), so a request sent at once may reach the new kernel
before that websocket's iopub has subscribed again, and its output is lost even with a local
ipykernel. So each websocket first does what Jupyter clients do (jupyter_server's "nudge",
jupyter_client's wait_for_ready): kernel_info_request until an iopub message of the new kernel
arrives on it; then the code goes at once and its output must arrive.

Prints one "ok: ..." line per step; exits 0 on success, 1 with a "FAILED: ..." line on stderr
(and the server's log) otherwise. Every step is bounded.
"""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

STEP_TIMEOUT = 60.0
# ipykernel flushes stdout before it sends execute_reply, so once the reply is in, the stream
# output is on its way on iopub; this is ample for it to arrive through any forwarding.
OUTPUT_AFTER_REPLY_TIMEOUT = 10.0


class Failure(Exception):
    pass


def ok(what):
    print("ok:", what, flush=True)


async def bounded(what, awaitable, timeout=STEP_TIMEOUT):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise Failure(f"{what}: nothing after {timeout:g} s") from None


class Server:
    """A jupyter_server on a free loopback port, with a token, in temporary dirs."""

    def __init__(self, tmp):
        self.token = uuid.uuid4().hex
        self.runtime = os.path.join(tmp, "runtime")
        env = dict(os.environ)
        for var in ["JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PORT"]:
            env.pop(var, None)
        for sub, var in [("runtime", "JUPYTER_RUNTIME_DIR"), ("config", "JUPYTER_CONFIG_DIR"),
                         ("home", "HOME"), ("ipython", "IPYTHONDIR")]:
            env[var] = os.path.join(tmp, sub)
            os.makedirs(env[var], mode=0o700)
        env["JUPYTER_TOKEN"] = self.token
        self.log_path = os.path.join(tmp, "server.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
                 "--ServerApp.port=0", "--ServerApp.open_browser=False", "--allow-root"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.base = None
        self.http = AsyncHTTPClient()

    async def wait_ready(self):
        # The server writes its info file (with the port it chose) just before its event loop
        # starts, and only that loop binds the port: so a refused connection is retried.
        info_file = os.path.join(self.runtime, f"jpserver-{self.proc.pid}.json")
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"jupyter_server exited ({self.proc.returncode}) before listening")
            try:
                with open(info_file) as f:
                    port = json.load(f)["port"]
                break
            except (OSError, ValueError, KeyError):
                await asyncio.sleep(0.1)
        self.base = f"127.0.0.1:{port}"
        while True:
            try:
                await self.request("GET", "/api/status")
                return
            except ConnectionRefusedError:
                if self.proc.poll() is not None:
                    raise Failure(f"jupyter_server exited ({self.proc.returncode}) before listening")
                await asyncio.sleep(0.1)

    def headers(self):
        return {"Authorization": f"token {self.token}"}

    async def request(self, method, path, body=None):
        response = await self.http.fetch(
            HTTPRequest(f"http://{self.base}{path}", method=method, headers=self.headers(),
                        body=json.dumps(body) if body is not None else ("" if method == "POST" else None),
                        request_timeout=STEP_TIMEOUT),
            raise_error=False,
        )
        if response.error:
            raise Failure(f"{method} {path}: HTTP {response.code} {response.body!r}")
        return json.loads(response.body) if response.body else None

    async def websocket(self, kernel_id, name):
        url = f"ws://{self.base}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"
        conn = await websocket_connect(HTTPRequest(url, headers=self.headers()))
        return KernelSocket(conn, name)

    def stop(self):
        if self.proc.poll() is None:
            # SIGTERM: a clean stop that shuts down the server's kernels too.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-8000:]


class KernelSocket:
    """One websocket on /api/kernels/{id}/channels, speaking the JSON message format (each
    message carries its `channel`)."""

    def __init__(self, conn, name):
        self.conn = conn
        self.name = name
        self.session = uuid.uuid4().hex

    async def execute(self, code, expected_text):
        """Runs `code`; returns once both its execute_reply (status ok) and a stream output
        containing `expected_text` have arrived on this websocket."""
        msg_id = await self.send("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True,
        })
        reply, output, seen = None, "", []
        self.session_of_kernel = None
        what = f"{self.name}: {code}"
        deadline = time.monotonic() + STEP_TIMEOUT
        while reply is None or expected_text not in output:
            now = time.monotonic()
            if reply is not None:
                deadline = min(deadline, reply_at + OUTPUT_AFTER_REPLY_TIMEOUT)
            if now >= deadline:
                got = "its execute_reply but not" if reply is not None else "neither its execute_reply nor"
                raise Failure(f"{what}: got {got} the stream output {expected_text!r}; messages for "
                              f"it: {seen or 'none'}; stream text: {output!r}")
            raw = await bounded(what, self.conn.read_message(), deadline - now)
            if raw is None:
                raise Failure(f"{what}: the websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            self.session_of_kernel = msg["header"]["session"]
            kind = msg["header"]["msg_type"]
            seen.append(f"{msg['channel']}/{kind}")
            if kind == "stream":
                output += msg["content"]["text"]
            elif kind == "execute_reply":
                if msg["content"]["status"] != "ok":
                    raise Failure(f"{what}: execute_reply {msg['content']}")
                reply, reply_at = msg, time.monotonic()
        return reply

    async def send(self, msg_type, content):
        msg_id = uuid.uuid4().hex
        await self.conn.write_message(json.dumps({
            "channel": "shell",
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "test",
                       "session": self.session, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "buffers": [], "content": content,
        }))
        return msg_id

    async def wait_for_new_kernel(self, old_session):
        """Sends kernel_info_request every second until an iopub message from a kernel other
        than `old_session` (the one before the restart) arrives; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + STEP_TIMEOUT
        while time.monotonic() < deadline:
            await self.send("kernel_info_request", {})
            resend = min(deadline, time.monotonic() + 1.0)
            while time.monotonic() < resend:
                try:
                    raw = await asyncio.wait_for(self.conn.read_message(), resend - time.monotonic())
                except asyncio.TimeoutError:
                    break
                if raw is None:
                    raise Failure(f"{self.name}: the websocket closed after the restart")
                msg = json.loads(raw)
                if msg["channel"] == "iopub" and msg["header"]["session"] != old_session:
                    return time.monotonic() - started
        raise Failure(f"{self.name}: no iopub message from the restarted kernel within "
                      f"{STEP_TIMEOUT:g} s (kernel_info_request sent every second)")

    def close(self):
        self.conn.close()


async def drive(server, kernel_name):
    await bounded("jupyter_server start", server.wait_ready())
    ok("jupyter_server is up")
    kernel = await bounded("POST /api/kernels", server.request("POST", "/api/kernels", {"name": kernel_name}))
    kernel_id = kernel["id"]
    ok(f"started kernel {kernel_name}")
    sockets = []
    try:
        notebook = await bounded("websocket 1", server.websocket(kernel_id, "ws1 (notebook)"))
        sockets.append(notebook)
        console = await bounded("websocket 2", server.websocket(kernel_id, "ws2 (console)"))
        sockets.append(console)
        await notebook.execute("print('before')", "before")
        ok("ws1 runs code and gets its output")
        old_session = notebook.session_of_kernel

        await bounded("POST restart", server.request("POST", f"/api/kernels/{kernel_id}/restart"))
        ok("restart returned")
        took = await notebook.wait_for_new_kernel(old_session)
        ok(f"ws1 hears the restarted kernel on iopub ({took:.2f} s after the restart returned)")
        await notebook.execute("print('after-restart')", "after-restart")
        ok("ws1's first code after the restart gets both its reply and its output")
        took = await console.wait_for_new_kernel(old_session)
        ok(f"ws2 hears the restarted kernel on iopub ({took:.2f} s later)")
        await console.execute("print('ws2')", "ws2")
        ok("ws2 still works after the restart")
    finally:
        for s in sockets:
            s.close()
    # (After a failure, stopping the server shuts the kernel down.)
    await bounded("DELETE kernel", server.request("DELETE", f"/api/kernels/{kernel_id}"))
    ok("kernel deleted")


def run_driver(prefix, drive, kernel_name):
    """Runs `drive(server, kernel_name)` against a fresh server in a temp dir; prints the
    failure and the server's log, and exits 1, on a Failure; stops the server in any case."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    server = None
    try:
        server = Server(tmp)
        asyncio.run(drive(server, kernel_name))
        server.stop()
        ok("server stopped")
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        if server is not None:
            server.stop()
            print(f"--- jupyter_server log (last lines):\n{server.log()}", file=sys.stderr)
        sys.exit(1)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run_driver("jupyter-server-restart-", drive, sys.argv[1])


if __name__ == "__main__":
    main()
