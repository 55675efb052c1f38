# sshpyk's relay on a Slurm login node, run with `python -S -c` after frames.py (one source)
# by slurm.sh in place of the `srun` that starts the supervisor on the compute node; argv: the
# job id, then srun's command line. It owns the step's stdin and stdout, so that the step (and
# the kernel) outlives the ssh session that started it, and it splices whole frames between
# the step and the launcher's current session:
#   - the session ends while its connection's sshd lives on (or before the launcher armed the
#     kernel): the launcher is gone, so the step's stdin is closed and the supervisor ends the
#     kernel at once (the job then ends after its grace, slurm_keeper.sh);
#   - the session ends with its connection (the network): nothing changes on the node; the
#     supervisor's lease runs out after the orphan timeout unless a new session comes through
#     relay.sock (in a 0700 dir; handed over by attach.py, as to a plain supervisor). Then the
#     supervisor is told "relayed_attach", and its frames go to the new session from its
#     "attached" notice on (what it sent in between was meant for the old one, and is resent
#     as the streams resume);
#   - the step ends without an exit report and without our hanging up (the lease ran out after
#     a network loss, or the supervisor died): nobody will restart into the job, so it is
#     cancelled at once.
# The first line we print names the socket and this python, for the launcher to come back.
# The process started runs the relay in a child and waits for it, so that the relay's dir (with
# its socket) goes with the relay even when the relay is killed.
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

# Past this much queued for one side, stop reading the other (the supervisor then stops
# reading the kernel, as over a slow session).
QUEUE_LIMIT = 4 << 20


def take(fd, n):
    got = b""
    while len(got) < n:
        more = os.read(fd, n - len(got))
        if not more:
            sys.exit(0)
        got += more
    return got


class Relay:
    def __init__(self, job, step_argv, dir, sshd_pid):
        self.job = job
        self.dir = dir
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(os.path.join(self.dir, "relay.sock"))
        self.listener.listen(4)
        os.write(1, ("sshpyk-slurm relay %s %s\n" % (os.path.join(self.dir, "relay.sock"), sys.executable)).encode())
        # What the launcher sent at once: the supervisor's source for the node's loader (a
        # 12-digit length, then the source); frames follow.
        preface = take(0, 12)
        preface += take(0, int(preface))
        self.step = subprocess.Popen(step_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for f in (self.step.stdin, self.step.stdout, self.step.stderr):
            os.set_blocking(f.fileno(), False)
        for fd in (0, 1, 2):
            os.set_blocking(fd, False)
        self.to_step = Link(self.step.stdout.fileno(), self.step.stdin.fileno(), None)
        self.to_step.queue(preface)
        self.session = Link(0, 1, sshd_pid)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, "attach")
        self.sel.register(self.step.stderr, selectors.EVENT_READ, "stderr")
        self.watched = {}
        # Until the supervisor's marker, its output passes as is (the node's login banners).
        self.before_marker = b""
        self.framed = False
        self.armed = False
        self.awaiting_attached = False
        self.exit_reported = False
        self.hung_up = False

    def watch(self, fd, what, want):
        """Registers `fd` as `what` when `want` (for writing if `what` ends in "-out", else for
        reading), else not."""
        if want and fd not in self.watched:
            self.sel.register(fd, selectors.EVENT_READ if not what.endswith("-out") else selectors.EVENT_WRITE, what)
            self.watched[fd] = what
        elif not want and fd in self.watched:
            self.sel.unregister(fd)
            del self.watched[fd]

    def update_interest(self):
        session = self.session
        self.watch(self.to_step.rfd, "step", session is None or session.out_len < QUEUE_LIMIT)
        if not self.hung_up:
            self.watch(self.to_step.wfd, "step-out", bool(self.to_step.out))
        if session:
            self.watch(session.rfd, "session", self.to_step.out_len < QUEUE_LIMIT)
            self.watch(session.wfd, "session-out", bool(session.out))

    def run(self):
        while True:
            self.update_interest()
            for key, _ in self.sel.select():
                what = key.data
                if what == "attach":
                    self.attach()
                elif what == "stderr":
                    self.pass_stderr()
                elif what == "session":
                    self.from_session()
                elif what == "session-out" and self.session:
                    self.session.flush()
                elif what == "step-out":
                    self.to_step.flush()
                elif what == "step":
                    if not self.from_step():
                        return self.finish()
            if self.session and self.session.dead:
                self.session_ended()

    def pass_stderr(self):
        try:
            data = os.read(self.step.stderr.fileno(), 65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(self.step.stderr)
            return
        try:
            os.write(2, data)  # best effort: the first session's stderr, gone with it
        except OSError:
            pass

    # ------------------------------------------------------------------ the launcher's side

    def from_session(self):
        frames = self.session.read_frames()
        if frames is None:
            self.session_ended()
            return
        for stream, kind, payload in frames:
            if stream == 0 and kind == MESSAGE and json.loads(payload).get("op") == "arm":
                self.armed = True
            self.to_step.send(stream, kind, payload)
        self.to_step.flush()

    def drop_session(self):
        for fd in (self.session.rfd, self.session.wfd):
            self.watch(fd, None, False)
        self.session.close()
        self.session = None

    def session_ended(self):
        sshd_pid = self.session.sshd_pid
        self.drop_session()
        if not self.armed or connection_lives(sshd_pid):
            self.hang_up()

    def hang_up(self):
        """The launcher is gone: the end of the step's stdin tells the supervisor."""
        self.watch(self.to_step.wfd, None, False)
        self.hung_up = True
        self.to_step.out.clear()
        self.to_step.dead = True
        self.step.stdin.close()

    def attach(self):
        """attach.py hands over the stdio of a new session (after a reconnection)."""
        received = receive_session(self.listener)
        if received is None:
            return
        conn, fds, sshd_pid = received
        if self.hung_up:
            conn.close()
            return
        if self.session:
            self.drop_session()
        for fd in fds:
            os.set_blocking(fd, False)
        self.session = Link(fds[0], fds[1], sshd_ancestor(sshd_pid), closer=conn.close)
        self.awaiting_attached = True
        self.to_step.notice(op="relayed_attach")
        self.to_step.flush()

    # ------------------------------------------------------------------ the supervisor's side

    def from_step(self):
        """Passes on what the supervisor wrote; False at the end of its output."""
        if not self.framed:
            try:
                data = os.read(self.to_step.rfd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                return False
            seen = self.before_marker + data
            at = seen.find(MARKER)
            if at < 0:
                keep = len(MARKER) - 1
                self.to_session(seen[: len(seen) - keep])
                self.before_marker = seen[len(seen) - keep:]
                return True
            self.framed = True
            self.to_session(seen[: at + len(MARKER)])
            self.to_step.inbuf += seen[at + len(MARKER):]
            frames = self.to_step.buffered_frames()
        else:
            frames = self.to_step.read_frames()
        if frames is None:
            return False
        for stream, kind, payload in frames:
            if stream == 0 and kind in (MESSAGE, NOTICE):
                event = json.loads(payload).get("event")
                if event == "exited":
                    self.exit_reported = True
                elif event == "attached" and self.awaiting_attached:
                    self.awaiting_attached = False
                    self.to_session(MARKER)
            if not self.awaiting_attached and self.session:
                self.session.send(stream, kind, payload)
        if self.session:
            self.session.flush()
        return True

    def to_session(self, data):
        if self.session and data:
            self.session.queue(data)
            self.session.flush()

    def finish(self):
        """The step ended: its last words to the launcher, the job cancelled if nobody will come
        back to it."""
        self.step.stdin.close()  # the end of its output (or frames not ours): the step ends
        status = self.step.wait()
        if self.session:
            self.session.flush_blocking(2.0)
            self.drop_session()
        if not self.exit_reported and not self.hung_up:
            try:
                subprocess.run(["scancel", self.job], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass  # the job's batch script ends it after the grace
        shutil.rmtree(self.dir, ignore_errors=True)
        return status


def main():
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sshd_pid = sshd_ancestor(os.getppid())
    dir = tempfile.mkdtemp(prefix="sshpyk-relay-")
    relay_pid = os.fork()
    if relay_pid == 0:
        relay = Relay(sys.argv[1], sys.argv[2:], dir, sshd_pid)
        try:
            status = relay.run()
        finally:
            shutil.rmtree(dir, ignore_errors=True)
        sys.exit(status if status >= 0 else 128 - status)
    # The session's stdio is the relay's alone: its end is the session's end.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _, status = os.waitpid(relay_pid, 0)
    shutil.rmtree(dir, ignore_errors=True)
    sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


main()
