# sshpyk remote supervisor: starts one Jupyter kernel on this host and guards it.
#
# Sent by the launcher over the ssh session's stdin (never on a command line) and run by the
# remote python. Protocol, one JSON object per line:
#   in:  a config line (holds the session key), then commands: arm, signal, kill, ping. The launcher
#        sends no command before "ready", so nothing is left in Python's stdin buffer after the
#        config line and the select loop can read the raw descriptor.
#   out: {"sshpyk": "ready" | "attached" | "exited" | "error", ...}
# The session is the lease, renewed by every line the launcher sends (it pings). After "arm", a
# lease that runs out (orphan timeout, plus one ping interval) ends the kernel; a launcher that
# comes back (after a network drop) attaches to supervisor.sock in the run dir and takes the
# lease over. At expiry, on kill, or when the kernel exits: kill the kernel's process
# group, remove every file we made, report, exit.
import json
import os
import select
import selectors
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


class Fatal(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Channel:
    """The launcher's end: the ssh session's stdio at first, an attached socket after a reconnect."""

    def __init__(self, rfile, wfile, closer=None):
        self.rfile, self.wfile, self.closer, self.buf = rfile, wfile, closer, b""

    def fileno(self):
        return self.rfile.fileno()

    def send(self, **msg):
        try:
            self.wfile.write((json.dumps(msg) + "\n").encode())
            self.wfile.flush()
            return True
        except OSError:
            return False

    def read_lines(self):
        """Lines now available, or None at EOF."""
        try:
            data = os.read(self.rfile.fileno(), 65536)
        except OSError:
            data = b""
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [l for l in lines if l.strip()]

    def close(self):
        if self.closer:
            self.closer()


def find_kernelspec(name):
    from jupyter_core.paths import jupyter_path

    for base in jupyter_path("kernels"):
        try:
            entries = os.listdir(base)
        except OSError:
            continue
        for entry in entries:
            if entry.lower() == name.lower():
                path = os.path.join(base, entry, "kernel.json")
                if os.path.isfile(path):
                    try:
                        with open(path, encoding="utf-8") as f:
                            spec = json.load(f)
                    except (OSError, ValueError) as e:
                        raise Fatal("bad_kernelspec", "remote kernelspec %s cannot be read: %s" % (path, e))
                    spec["resource_dir"] = os.path.join(base, entry)
                    return spec
    # jupyter_client offers ipykernel as "python3" even without a kernel.json on disk.
    if name == "python3" and have_module("ipykernel"):
        return {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "language": "python",
            "display_name": "Python 3 (ipykernel)",
            "resource_dir": "",
        }
    raise Fatal("no_kernel", "remote kernel '%s' not found; available: %s" % (name, ", ".join(available_kernels()) or "none"))


def available_kernels():
    from jupyter_core.paths import jupyter_path

    names = set()
    for base in jupyter_path("kernels"):
        try:
            names.update(e for e in os.listdir(base) if os.path.isfile(os.path.join(base, e, "kernel.json")))
        except OSError:
            pass
    if have_module("ipykernel"):
        names.add("python3")
    return sorted(names)


def have_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def make_run_dir():
    from jupyter_core.paths import jupyter_runtime_dir

    base = jupyter_runtime_dir()
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix="sshpyk-", dir=base)
    except OSError as e:
        raise Fatal("runtime_dir", "remote runtime dir %s is not writable (%s); fix its permissions or set JUPYTER_RUNTIME_DIR on the remote" % (base, e.strerror))
    # Unix socket paths must stay short; fall back to the temp dir when the runtime dir is deep.
    if len(run_dir) > 80:
        os.rmdir(run_dir)
        run_dir = tempfile.mkdtemp(prefix="sshpyk-")
    return run_dir


def kernel_argv(spec, connection_file):
    argv = [a.replace("{connection_file}", connection_file).replace("{resource_dir}", spec.get("resource_dir", "")) for a in spec["argv"]]
    major, minor = sys.version_info[:2]
    if argv and argv[0] in ("python", "python%d" % major, "python%d.%d" % (major, minor)):
        argv[0] = sys.executable
    return argv


def free_tcp_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pick_transport(argv):
    # ipykernel serves Unix sockets: in our 0700 run dir no other user can even connect. Other
    # kernels get TCP on the remote loopback.
    return "ipc" if any(os.path.basename(a).startswith("ipykernel") for a in argv) else "tcp"


def write_connection_file(run_dir, config, transport):
    if transport == "ipc":
        ip, ports = os.path.join(run_dir, "k"), [1, 2, 3, 4, 5]
        endpoints = {c: "%s-%d" % (ip, p) for c, p in zip(CHANNELS, ports)}
    else:
        ip, ports = "127.0.0.1", free_tcp_ports(5)
        endpoints = dict(zip(CHANNELS, ports))
    info = {"transport": transport, "ip": ip, "key": config["key"], "signature_scheme": config["signature_scheme"], "kernel_name": config["kernel_name"]}
    info.update({"%s_port" % c: p for c, p in zip(CHANNELS, ports)})
    path = os.path.join(run_dir, "kernel.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return path, endpoints


def launcher_gone(wait=0.01):
    """Whether stdin became readable (EOF: nothing else is sent before "ready") within `wait`."""
    return bool(select.select([0], [], [], wait)[0])


def listening(endpoint):
    """A Unix socket path or a loopback TCP port that accepts connections."""
    family, address = (socket.AF_UNIX, endpoint) if isinstance(endpoint, str) else (socket.AF_INET, ("127.0.0.1", endpoint))
    with socket.socket(family) as s:
        return s.connect_ex(address) == 0


def prepare_kernel():
    # We ignore SIGINT and SIGHUP; the kernel must get the defaults back (interrupts!).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # The kernel must not outlive its guard, even if the guard is killed with SIGKILL.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Supervisor:
    def __init__(self, config):
        self.config = config
        self.orphan_timeout = float(config["orphan_timeout"])
        self.ping_interval = float(config["ping_interval"])
        self.run_dir = None
        self.kernel = None
        self.armed = False
        # Why we ended the kernel, if we did: "orphaned" (lease ran out) or "killed" (asked to).
        self.reason = None
        self.tail = []
        self.sel = selectors.DefaultSelector()
        self.exit_r, self.exit_w = os.pipe()
        # The launcher's end (None while it is away); the output pump writes to it too.
        self.channel = None
        self.send_lock = threading.Lock()

    def emit(self, **msg):
        with self.send_lock:
            if self.channel:
                self.channel.send(**msg)

    def emit_output(self, text):
        # Best effort: never block on a stalled link (it would hold the lock the main loop
        # needs); a short line into a writable pipe does not block.
        with self.send_lock:
            if self.channel and select.select([], [self.channel.wfile], [], 0)[1]:
                self.channel.send(sshpyk="output", text=text[:3000])

    def start(self):
        if not have_module("jupyter_client"):
            raise Fatal("no_jupyter_client", "remote python %s cannot import jupyter_client; install it there (pip install jupyter_client ipykernel)" % sys.executable)
        spec = find_kernelspec(self.config["kernel_name"])
        self.run_dir = make_run_dir()
        transport = pick_transport(kernel_argv(spec, ""))
        connection_file, endpoints = write_connection_file(self.run_dir, self.config, transport)
        argv = kernel_argv(spec, connection_file)
        env = dict(os.environ)
        env.update({k: string.Template(v).safe_substitute(os.environ) for k, v in spec.get("env", {}).items()})
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        # ipykernel then watches its parent (us) and exits if we vanish.
        env["JPY_PARENT_PID"] = str(os.getpid())
        try:
            self.kernel = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=os.path.expanduser("~"), preexec_fn=prepare_kernel,
            )
        except OSError as e:
            raise Fatal("kernel_start", "cannot start remote kernel %s: %s" % (argv[0], e.strerror))
        threading.Thread(target=self.pump_output, daemon=True).start()
        threading.Thread(target=self.wait_kernel, daemon=True).start()
        self.wait_listening(endpoints.values())
        return {
            "pid": self.kernel.pid, "hostname": socket.gethostname(), "transport": transport,
            "endpoints": endpoints, "run_dir": self.run_dir,
            "interrupt_mode": spec.get("interrupt_mode", "signal"), "language": spec.get("language", ""),
        }

    def pump_output(self):
        # The kernel's output reaches the launcher's stderr, like a local kernel's would, through
        # whichever channel is current (it survives a reconnection).
        for line in iter(self.kernel.stdout.readline, b""):
            text = line.decode(errors="replace")
            self.tail = (self.tail + [text.rstrip()])[-20:]
            self.emit_output(text)

    def wait_kernel(self):
        self.kernel.wait()
        os.write(self.exit_w, b"x")

    def wait_listening(self, endpoints):
        # Report ready only once the kernel listens: a forward to a closed endpoint would fail.
        # The launcher sends nothing before "ready", so a readable stdin means it gave up.
        pending = set(endpoints)
        while pending and self.kernel.poll() is None:
            pending = {e for e in pending if not listening(e)}
            if pending and launcher_gone():
                raise Fatal("abandoned", "the launcher gave up before the kernel listened")

    def kill_kernel(self):
        if self.kernel and self.kernel.poll() is None:
            try:
                os.killpg(self.kernel.pid, signal.SIGKILL)
            except OSError:
                pass
            self.kernel.wait()

    def cleanup(self):
        if self.kernel:
            # Whatever the kernel started in its group goes with it.
            try:
                os.killpg(self.kernel.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def exit_message(self):
        code = self.kernel.returncode
        return {"status": code if code >= 0 else None, "signal": -code if code < 0 else None, "tail": self.tail[-5:], "reason": self.reason}

    def handle(self, line):
        try:
            cmd = json.loads(line)
        except ValueError:
            return
        op = cmd.get("op")
        if op == "arm":
            self.armed = True
        elif op == "signal":
            try:
                os.killpg(self.kernel.pid, getattr(signal, cmd["signal"]))
            except (OSError, AttributeError):
                pass
        elif op == "kill":
            self.reason = "killed"
            self.kill_kernel()
        # "ping" needs no action: any line renews the lease.

    def serve(self):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(os.path.join(self.run_dir, "supervisor.sock"))
        listener.listen(4)
        self.sel.register(listener, selectors.EVENT_READ, "attach")
        self.sel.register(self.exit_r, selectors.EVENT_READ, "exit")
        self.sel.register(self.channel, selectors.EVENT_READ, "channel")
        # The launcher pings every `ping_interval`; a silent or closed channel is a lost launcher
        # (a dead link never shows as EOF here). One interval of grace, so that a drop shorter
        # than the orphan timeout never ends the kernel.
        lease = self.orphan_timeout + self.ping_interval
        expires = None
        while True:
            timeout = None if expires is None else max(0.0, expires - time.monotonic())
            events = self.sel.select(timeout)
            if not events and expires is not None and time.monotonic() >= expires:
                expires = None
                self.reason = "orphaned"
                self.kill_kernel()
                continue
            for key, _ in events:
                if key.data == "exit":
                    self.cleanup()
                    self.emit(sshpyk="exited", **self.exit_message())
                    return
                if key.data == "attach":
                    conn, _ = listener.accept()
                    f = conn.makefile("rwb", buffering=0)
                    with self.send_lock:
                        if self.channel:
                            self.sel.unregister(self.channel)
                            self.channel.close()
                        self.channel = Channel(f, f, closer=conn.close)
                    self.sel.register(self.channel, selectors.EVENT_READ, "channel")
                    expires = time.monotonic() + lease
                    self.emit(sshpyk="attached", pid=self.kernel.pid)
                elif key.data == "channel":
                    if key.fileobj is not self.channel:
                        continue  # the channel an attach just replaced
                    lines = self.channel.read_lines()
                    if lines is None:
                        with self.send_lock:
                            self.sel.unregister(self.channel)
                            self.channel.close()
                            self.channel = None
                        if not self.armed:
                            self.kill_kernel()
                        continue
                    for line in lines:
                        self.handle(line)
                    if self.armed:
                        expires = time.monotonic() + lease


def main():
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    channel = Channel(sys.stdin.buffer, sys.stdout.buffer)
    config = json.loads(sys.stdin.buffer.readline())
    sup = Supervisor(config)
    sup.channel = channel
    signal.signal(signal.SIGTERM, lambda *_: (sup.kill_kernel(), sup.cleanup(), os._exit(1)))
    try:
        ready = sup.start()
    except Exception as e:
        # Whatever went wrong, nothing stays behind (the run dir holds the key).
        sup.kill_kernel()
        sup.cleanup()
        kind, message = (e.kind, str(e)) if isinstance(e, Fatal) else ("internal", "remote supervisor failed: %s: %s" % (type(e).__name__, e))
        sup.emit(sshpyk="error", kind=kind, message=message)
        return
    if sup.kernel.poll() is not None:
        sup.kernel.wait()
        os.read(sup.exit_r, 1)
        sup.cleanup()
        sup.emit(sshpyk="exited", **sup.exit_message())
        return
    sup.emit(sshpyk="ready", **ready)
    try:
        sup.serve()
    finally:
        sup.kill_kernel()
        sup.cleanup()


main()
