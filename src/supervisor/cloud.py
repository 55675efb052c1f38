# sshpyk remote cloud mounts: `rclone mount` as a child of the supervisor, for the kernel's life
# or until removed. Sent ahead of supervisor.py in the same source (see src/supervisor/session.rs);
# the launcher's side is src/mounts/cloud_on_remote/.
#
# Each mount: the rclone config (it holds the credentials) arrives in a frame of the session and
# is written to a 0600 file in a new 0700 directory of an unpredictable name on /dev/shm (a tmpfs
# that, unlike $XDG_RUNTIME_DIR, survives the end of the user's sessions, i.e. a network drop),
# locked while in use so that the next supervisor removes it if we die without cleaning up;
# `rclone lsf` of the source turns bad credentials or a missing bucket into one clear error
# before anything is mounted; `rclone mount` runs as our child (its own death signal is SIGTERM,
# on which it unmounts). Its VFS cache dir is the same for every mount of one store and path
# (~/.cache/sshpyk/rclone), so that what one run could not upload, the next uploads. Unmounting:
# wait for the uploads (bounded), `fusermount3 -u` (lazy when still busy), rclone ended, its
# directory removed, a mount point we created removed.
import errno
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

PREFLIGHT_TIMEOUT = 60.0
MOUNT_TIMEOUT = 30.0
RCLONE_EXIT_WAIT = 3.0
# How long unmounting waits for rclone to upload what was written (its write-back delay, then
# the upload): the launcher's default shutdown timeout. What is still pending then stays in the
# mount's cache dir, and the next mount of the same store uploads it.
UPLOAD_WAIT = 30.0
# Config keys that hold credentials: left out of the cache dir's name, so that new credentials
# for the same store find what the old ones left.
SECRET_WORDS = ("pass", "secret", "key", "token", "sas", "credential", "session")
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


def shm_dir():
    """A tmpfs (/dev/shm; the temp dir where there is none)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else tempfile.gettempdir()


def private_prefix():
    return "sshpyk-%d-" % os.getuid()


def locked(path, create):
    """An fd of `path` under an exclusive flock; None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def private_dir():
    """A new 0700 directory of ours on a tmpfs and its lock's fd. Its name is unpredictable, so
    that no other user can take it first (a fixed name can be squatted). Made under another
    name and renamed once locked: the sweep never sees it unlocked."""
    base = shm_dir()
    try:
        new = tempfile.mkdtemp(prefix="." + private_prefix(), dir=base)
        fd = locked(os.path.join(new, "lock"), True)
        path = os.path.join(base, os.path.basename(new)[1:])
        os.rename(new, path)
    except OSError as e:
        raise CloudError("private-dir", "cannot create a private directory in %s: %s" % (base, e.strerror))
    return path, fd


def sweep_private_dirs():
    """Removes the private dirs (rclone configs: credentials) that supervisors killed before
    their cleanup left: ours and not locked."""
    base = shm_dir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(private_prefix())]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        fd = None
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = locked(os.path.join(path, "lock"), False)
            if fd is None:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def cache_root():
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sshpyk", "rclone")


def cache_dir(spec):
    """The mount's rclone cache dir and its lock's fd: the same dir for every mount of one store
    and path, whatever the credentials or the run; a second mount of it at the same time gets
    the next free one."""
    kept = [l.strip() for l in spec["config"].splitlines() if l.strip() and not any(w in l.split("=", 1)[0].lower() for w in SECRET_WORDS)]
    key = hashlib.sha256("\n".join([spec["source"]] + kept).encode()).hexdigest()[:24]
    root = cache_root()
    try:
        os.makedirs(root, 0o700, exist_ok=True)
        for n in range(16):
            path = os.path.join(root, key if n == 0 else "%s-%d" % (key, n))
            fd = locked(path + ".lock", True)
            if fd is not None:
                return path, fd
    except OSError as e:
        raise CloudError("cache", "cannot use the cache dir %s: %s" % (root, e.strerror))
    raise CloudError("cache", "16 mounts of %s are running already; remove one" % spec.get("label", spec["source"]))


def pending_uploads(cache):
    """What rclone has yet to upload from `cache`, as paths in the store: each cached file whose
    metadata says dirty, is older than the file (one written again, just closed, before rclone
    marks it dirty) or is missing."""
    data = os.path.join(cache, "vfs")
    out = []
    for dirpath, _, files in os.walk(data):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, data)
            try:
                with open(os.path.join(cache, "vfsMeta", rel)) as f:
                    dirty = json.load(f).get("Dirty") or os.stat(path).st_mtime_ns > os.fstat(f.fileno()).st_mtime_ns
            except (OSError, ValueError, AttributeError):
                dirty = os.path.exists(path)
            if dirty:
                # The first component is rclone's name for the remote.
                out.append(rel.split(os.sep, 1)[-1])
    return sorted(out)


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


def fusermount():
    return shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


def unmount_dead(path):
    """Lazily unmounts a FUSE mount at `path` whose server died (a killed rclone leaves it:
    "transport endpoint is not connected"); fusermount only unmounts one of ours."""
    try:
        os.stat(path)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    subprocess.run([fusermount(), "-u", "-z", path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
        self.cache = None
        # Held while the mount lives (rclone inherits them): the sweep and a second mount of
        # the same store keep off.
        self.locks = []
        self.created_top = None

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "rclone.log"), errors="replace") as f:
                return error_line(f.read()[-8192:])
        except OSError:
            return "no log"

    def state(self):
        pending = pending_uploads(self.cache)
        if self.proc is not None and self.proc.poll() is None and self.remote in mounted_paths():
            return {"remote": self.remote, "state": "mounted", "pending": pending}
        return {"remote": self.remote, "state": "failing", "error": self.log_tail(), "pending": pending}

    def wait_uploads(self, deadline):
        """Waits until rclone uploaded every file written, it ended, or `deadline`; what is still
        pending then."""
        while True:
            pending = pending_uploads(self.cache)
            if not pending or self.proc.poll() is not None or time.monotonic() >= deadline:
                return pending
            time.sleep(0.1)

    def kept_message(self, pending):
        shown = ", ".join(pending[:5]) + (" and %d more" % (len(pending) - 5) if len(pending) > 5 else "")
        return ("%d file(s) written to %s not uploaded to %s yet (%s); kept in %s, the next mount of %s uploads them"
                % (len(pending), self.remote, self.label, shown, self.cache, self.label))


class CloudMounts:
    """Every cloud mount of one kernel. `mount`/`unmount` block (they run rclone and wait for
    it); `submit` runs them on a thread and reports through `wake_fd` and `results`."""

    # `_run_dir`: supervisor.py still passes it (the cache no longer lives there); it goes once
    # that file's rewrite lands.
    def __init__(self, _run_dir=None):
        sweep_private_dirs()
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
            if remote not in self.mounts and remote in mounted_paths():
                unmount_dead(remote)
            if remote in self.mounts or remote in mounted_paths():
                raise CloudError("busy", "%s is already a mount point; remove that mount or choose another path" % remote)
            self.mounts[remote] = mount
        try:
            self.prepare_mount_point(mount)
            mount.dir, lock = private_dir()
            mount.locks.append(lock)
            mount.cache, lock = cache_dir(spec)
            mount.locks.append(lock)
            config = os.path.join(mount.dir, "rclone.conf")
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(spec["config"])
            self.preflight(rclone, config, spec["source"], label)
            self.start_rclone(rclone, config, spec, mount)
        except BaseException:
            self.unmount(remote, time.monotonic())
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
        argv = [rclone, "mount", "--config", config, "--cache-dir", mount.cache] + list(spec.get("flags", [])) + [spec["source"], mount.remote]
        log_fd = os.open(os.path.join(mount.dir, "rclone.log"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with self.lock:
                mount.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, preexec_fn=rclone_child, pass_fds=mount.locks)
                self.children.add(mount.proc.pid)
        finally:
            os.close(log_fd)
        # Reaped the moment it dies: one mounted at the start has no other thread waiting on it
        # (the supervisor's own reaping spares our children).
        threading.Thread(target=mount.proc.wait, daemon=True).start()
        end = time.monotonic() + MOUNT_TIMEOUT
        while mount.remote not in mounted_paths():
            if mount.proc.poll() is not None:
                raise CloudError("mount-failed", "rclone mount exited with status %d: %s" % (mount.proc.returncode, mount.log_tail()))
            if time.monotonic() > end:
                raise CloudError("mount-failed", "rclone mount was not ready within %d s: %s" % (MOUNT_TIMEOUT, mount.log_tail()))
            time.sleep(0.05)

    def unmount(self, remote, deadline=None):
        """Unmounts and removes everything of the mount at `remote` once rclone uploaded what was
        written, or at `deadline` (UPLOAD_WAIT from now by default). None when there is no such
        mount, else what is still pending, which is said on our stderr (the launcher's log)."""
        remote = os.path.expanduser(remote)
        with self.lock:
            mount = self.mounts.pop(remote, None)
        if mount is None:
            return None
        pending = []
        if mount.proc is not None:
            pending = mount.wait_uploads(time.monotonic() + UPLOAD_WAIT if deadline is None else deadline)
            if pending:
                try:
                    sys.stderr.write("sshpyk: %s\n" % mount.kept_message(pending))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass  # the session that carried our stderr is gone
            for attempt in range(10):
                if remote not in mounted_paths():
                    break
                lazy = ["-z"] if attempt == 9 else []
                subprocess.run([fusermount(), "-u"] + lazy + [remote], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        if mount.proc is not None and not pending:
            # Everything uploaded: the copies need not take room until the next mount.
            shutil.rmtree(mount.cache, ignore_errors=True)
        for fd in mount.locks:
            os.close(fd)
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
        return pending

    def unmount_all(self):
        # Last made first: a mount point may sit in a directory made for an earlier one. One
        # deadline for all: their rclones upload at the same time.
        deadline = time.monotonic() + UPLOAD_WAIT
        for remote in reversed(list(self.mounts)):
            self.unmount(remote, deadline)

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
                else:
                    mount = self.mounts.get(os.path.expanduser(arg))
                    pending = self.unmount(arg)
                    if pending is None:
                        error = {"kind": "no-mount", "message": "no cloud mount at %s" % arg}
                    elif pending:
                        error = {"kind": "pending", "message": "unmounted, but " + mount.kept_message(pending)}
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
