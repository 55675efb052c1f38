# sshpyk remote cloud mounts: `rclone mount` as a child of the supervisor, for the kernel's life
# or until removed. Sent ahead of supervisor.py in the same source (see src/remote/session.rs);
# the launcher's side is src/cloud/.
#
# Each mount: the rclone config (it holds the credentials) arrives in a frame of the session and
# is written to a 0600 file in a 0700 directory on /dev/shm (a tmpfs that, unlike
# $XDG_RUNTIME_DIR, survives the end of the user's sessions, i.e. a network drop); `rclone lsf`
# of the source turns bad credentials or a missing bucket into one clear error before anything
# is mounted; `rclone mount` runs as our child (its own death signal is SIGTERM, on which it
# unmounts). Unmounting: `fusermount3 -u` (lazy when still busy), rclone ended, its directory
# removed, a mount point we created removed.
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

PREFLIGHT_TIMEOUT = 60.0
MOUNT_TIMEOUT = 30.0
RCLONE_EXIT_WAIT = 3.0
INSTALL_HINT = "install it there (Debian/Ubuntu: `apt install rclone fuse3`)"
# How backends say it, most specific first; a bare HTTP status only when no word matched.
AUTH_WORDS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "AuthorizationFailure", "AuthenticationFailed",
              "unable to authenticate", "invalid_grant", "invalid_access_token", "expired_access_token", "Unauthorized", "Forbidden")
MISSING_WORDS = ("NoSuchBucket", "ContainerNotFound", "directory not found", "not found")


class CloudError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def mounted_paths():
    """Mount points in our mount namespace."""
    paths = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4:
                    paths.add(fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    except OSError:
        pass
    return paths


def private_dir():
    """A 0700 directory of ours on a tmpfs (/dev/shm; the temp dir where there is none)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else tempfile.gettempdir()
    top = os.path.join(base, "sshpyk-%d" % os.getuid())
    try:
        os.mkdir(top, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise CloudError("private-dir", "cannot create %s: %s" % (top, e.strerror))
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise CloudError("private-dir", "%s is not a private directory of ours; remove it on the remote" % top)
    return tempfile.mkdtemp(prefix="m-", dir=top)


LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?:[A-Z]+ *: )?")


def error_line(text):
    """rclone's last error line, without its timestamp and level, and the HTTP status of a
    multi-line service error (Azure's) when there is one."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l for l in lines if " ERROR " in l or " CRITICAL" in l or "Failed to" in l or "Fatal error" in l]
    line = LOG_PREFIX.sub("", (errors or lines or ["no output"])[-1])
    status = [l for l in lines if l.startswith("RESPONSE Status:")]
    if status:
        line = "%s: %s" % (line.split(": -> ")[0], status[-1])
    return line[:400]


def classify(source, text):
    """(kind, message) for a failed `rclone lsf`."""
    line = error_line(text)
    if any(w in text for w in AUTH_WORDS) or (not any(w in text for w in MISSING_WORDS) and re.search(r"\b(401|403)\b", text)):
        return "auth", "the backend refused the credentials for %s (%s); fix them: `sshpyk mounts remove`, then `sshpyk mounts add` with new --creds" % (source, line)
    if any(w in text for w in MISSING_WORDS) or re.search(r"\b404\b", text):
        return "missing", "%s does not exist (%s); create it or fix --source" % (source, line)
    return "preflight", "rclone cannot list %s (%s); check the endpoint, the network and the credentials" % (source, line)


def rclone_child():
    # Our SIGINT/SIGHUP are ignored; rclone gets the defaults back, and SIGTERM (on which it
    # unmounts) when we die, even by SIGKILL.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class Mount:
    def __init__(self, remote, label):
        self.remote, self.label = remote, label
        self.proc = None
        self.dir = None
        self.created_top = None

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "rclone.log"), errors="replace") as f:
                return error_line(f.read()[-8192:])
        except OSError:
            return "no log"

    def state(self):
        if self.proc is not None and self.proc.poll() is None and self.remote in mounted_paths():
            return {"remote": self.remote, "state": "mounted"}
        return {"remote": self.remote, "state": "failing", "error": self.log_tail()}


class CloudMounts:
    """Every cloud mount of one kernel. `mount`/`unmount` block (they run rclone and wait for
    it); `submit` runs them on a thread and reports through `wake_fd` and `results`."""

    def __init__(self, cache_root):
        self.cache_root = cache_root
        self.mounts = {}
        # rclone processes of ours still running (the supervisor neither signals nor reaps them).
        self.children = set()
        self.lock = threading.Lock()
        self.done = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)

    # -------------------------------------------------------------- blocking

    def mount(self, spec):
        remote = os.path.expanduser(spec["remote"])
        label = spec.get("label", spec["source"])
        rclone = shutil.which("rclone")
        if not rclone:
            raise CloudError("no-rclone", "rclone not found on the remote; " + INSTALL_HINT)
        if not (shutil.which("fusermount3") or shutil.which("fusermount")):
            raise CloudError("no-fuse", "fusermount3 not found on the remote; " + INSTALL_HINT)
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise CloudError("no-fuse", "/dev/fuse is not usable on the remote; install fuse3 there and make /dev/fuse usable")
        mount = Mount(remote, label)
        with self.lock:
            if remote in self.mounts or remote in mounted_paths():
                raise CloudError("busy", "%s is already a mount point; remove that mount or choose another path" % remote)
            self.mounts[remote] = mount
        try:
            self.prepare_mount_point(mount)
            mount.dir = private_dir()
            config = os.path.join(mount.dir, "rclone.conf")
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(spec["config"])
            self.preflight(rclone, config, spec["source"], label)
            self.start_rclone(rclone, config, spec, mount)
        except BaseException:
            self.unmount(remote)
            raise
        return mount.proc

    def prepare_mount_point(self, mount):
        path = mount.remote
        if not os.path.isabs(path):
            raise CloudError("not-dir", "mount point %s is not an absolute path" % path)
        if os.path.lexists(path):
            if not os.path.isdir(path):
                raise CloudError("not-dir", "mount point %s exists and is not a directory; choose another path" % path)
            if os.listdir(path):
                raise CloudError("not-empty", "mount point %s is a non-empty directory; empty it or choose another path" % path)
            return
        top = path
        while not os.path.exists(os.path.dirname(top)):
            top = os.path.dirname(top)
        try:
            os.makedirs(path, 0o700)
        except OSError as e:
            raise CloudError("mkdir", "cannot create mount point %s: %s" % (path, e.strerror))
        mount.created_top = top

    def preflight(self, rclone, config, source, label):
        argv = [rclone, "lsf", "--config", config, "--max-depth", "1", "--low-level-retries", "1", "--retries", "1",
                "--contimeout", "10s", "--timeout", "20s", source]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=rclone_child)
        with self.lock:
            self.children.add(proc.pid)
        try:
            _, err = proc.communicate(timeout=PREFLIGHT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise CloudError("preflight", "rclone could not list %s within %d s; check the endpoint and the network" % (label, PREFLIGHT_TIMEOUT))
        finally:
            with self.lock:
                self.children.discard(proc.pid)
        if proc.returncode != 0:
            raise CloudError(*classify(label, err.decode(errors="replace")))

    def start_rclone(self, rclone, config, spec, mount):
        cache = os.path.join(self.cache_root, "rclone-cache", os.path.basename(mount.dir))
        argv = [rclone, "mount", "--config", config, "--cache-dir", cache] + list(spec.get("flags", [])) + [spec["source"], mount.remote]
        log_fd = os.open(os.path.join(mount.dir, "rclone.log"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with self.lock:
                mount.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, preexec_fn=rclone_child)
                self.children.add(mount.proc.pid)
        finally:
            os.close(log_fd)
        end = time.monotonic() + MOUNT_TIMEOUT
        while mount.remote not in mounted_paths():
            if mount.proc.poll() is not None:
                raise CloudError("mount-failed", "rclone mount exited with status %d: %s" % (mount.proc.returncode, mount.log_tail()))
            if time.monotonic() > end:
                raise CloudError("mount-failed", "rclone mount was not ready within %d s: %s" % (MOUNT_TIMEOUT, mount.log_tail()))
            time.sleep(0.05)

    def unmount(self, remote):
        """Unmounts and removes everything of the mount at `remote`; False when there is none."""
        remote = os.path.expanduser(remote)
        with self.lock:
            mount = self.mounts.pop(remote, None)
        if mount is None:
            return False
        if mount.proc is not None:
            fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
            for attempt in range(10):
                if remote not in mounted_paths():
                    break
                lazy = ["-z"] if attempt == 9 else []
                subprocess.run([fusermount, "-u"] + lazy + [remote], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0 if attempt == 9 else 0.2)
            if mount.proc.poll() is None:
                mount.proc.terminate()
                try:
                    mount.proc.wait(RCLONE_EXIT_WAIT)
                except subprocess.TimeoutExpired:
                    mount.proc.kill()
                    mount.proc.wait()
            with self.lock:
                self.children.discard(mount.proc.pid)
        if mount.dir:
            shutil.rmtree(mount.dir, ignore_errors=True)
        if mount.created_top:
            path = remote
            while True:
                try:
                    os.rmdir(path)
                except OSError:
                    break
                if path == mount.created_top:
                    break
                path = os.path.dirname(path)
        return True

    def unmount_all(self):
        # Last made first: a mount point may sit in a directory made for an earlier one.
        for remote in reversed(list(self.mounts)):
            self.unmount(remote)

    # -------------------------------------------------------------- for the supervisor's loop

    def pids(self):
        with self.lock:
            return set(self.children)

    def states(self):
        with self.lock:
            return [m.state() for m in self.mounts.values() if m.proc is not None]

    def submit(self, request_id, op, arg):
        """Runs `mount(arg)` or `unmount(arg)` on a thread; the result comes out of `results`."""

        def run():
            error = rclone = None
            try:
                if op == "mount":
                    rclone = self.mount(arg)
                elif not self.unmount(arg):
                    error = {"kind": "no-mount", "message": "no cloud mount at %s" % arg}
            except CloudError as e:
                error = {"kind": e.kind, "message": str(e)}
            except Exception as e:
                error = {"kind": "internal", "message": "%s: %s" % (type(e).__name__, e)}
            self.done.put((request_id, error))
            os.write(self.wake_w, b".")
            if rclone is not None:
                # rclone's death signal goes with the thread that started it: this one lives
                # as long as rclone.
                rclone.wait()

        threading.Thread(target=run, daemon=True).start()

    def results(self):
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                return out
