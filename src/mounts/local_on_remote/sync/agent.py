# sshpyk's sync agent: keeps a copy of a local project directory on this host's own disk, so
# that the kernel imports and reads it at disk speed (src/mounts/local_on_remote/sync/mod.rs says why). Run by
# the remote python from its ssh session's stdin (after the loader, like the supervisor), argv:
# the copy's root, then "ro" or "rw". It speaks to the launcher over the session's stdin and
# stdout: each message is `u32 length | JSON`, and a "put" or "data" message is followed by the
# file's bytes (`size` of them), after a marker line (the login shell may print before it). The
# launcher's side, typed: src/mounts/local_on_remote/sync/wire.rs.
#
# - At start: the root is made (refused when it exists, is not empty and is not a copy of
#   ours), then every entry under it is reported ("index").
# - The launcher sends changes ("put", "mkdir", "symlink", "remove"), each with what it expects
#   to replace ("expect"); a change is applied only when that is what is there (else it is
#   "refused", with what is there: the kernel changed it meanwhile, and the launcher keeps both;
#   else "applied").
#   A file is written to a temporary name then renamed, so the kernel never reads half a file.
# - It asks for files ("get"), answered with "data".
# - Every POLL seconds the tree is scanned, and what changed since the last scan is reported
#   ("changed"). "flush" asks for a scan now, answered with "flushed" after its changes.
# Nothing here follows a symlink: links are reported and made as links.
import json
import os
import select
import signal
import stat
import struct
import sys
import time

POLL = 0.25
MARK = ".sshpyk-sync"
TMP = ".sshpyk-tmp-"
LENGTH = struct.Struct(">I")
MARKER = b"\nsshpyk-sync-1\n"
# Directories never scanned (the launcher excludes them anyway): what the kernel writes there
# is not the project's.
SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints"}


def meta(st, path):
    if stat.S_ISLNK(st.st_mode):
        return ["link", 0, 0, 0, os.readlink(path)]
    if stat.S_ISDIR(st.st_mode):
        return ["dir", 0, 0, stat.S_IMODE(st.st_mode), None]
    if stat.S_ISREG(st.st_mode):
        return ["file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), None]
    return None


def same(a, b):
    """Whether two entries hold the same thing (src/mounts/local_on_remote/sync/wire.rs, Meta::same)."""
    if a is None or b is None:
        return a is None and b is None
    if a[0] != b[0]:
        return False
    if a[0] == "file":
        return a[1] == b[1] and a[2] == b[2]
    if a[0] == "link":
        return a[4] == b[4]
    return True


def scan(root):
    """Every entry under `root` by relative path, links not followed."""
    found, todo = {}, [""]
    while todo:
        rel = todo.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel) if rel else root))
        except OSError:
            continue
        for entry in entries:
            if entry.name == MARK or entry.name.startswith(TMP):
                continue
            path = rel + "/" + entry.name if rel else entry.name
            try:
                m = meta(entry.stat(follow_symlinks=False), entry.path)
            except OSError:
                continue
            if m is None:
                continue
            found[path] = m
            if m[0] == "dir" and entry.name not in SKIP_DIRS:
                todo.append(path)
    return found


class Agent:
    def __init__(self, root, read_only):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.read_only = read_only
        self.inbuf = bytearray()
        self.out = bytearray()

    def prepare(self):
        if os.path.lexists(self.root):
            if not os.path.isdir(self.root) or os.path.islink(self.root):
                return "%s exists and is not a directory" % self.root
            if os.listdir(self.root) and not os.path.exists(os.path.join(self.root, MARK)):
                return "%s is not empty and is not a copy made by sshpyk; choose an empty or missing directory" % self.root
        else:
            try:
                os.makedirs(self.root, 0o700)
            except OSError as e:
                return "cannot create %s: %s" % (self.root, e.strerror)
        open(os.path.join(self.root, MARK), "w").close()
        return None

    def send(self, msg, data=b""):
        payload = json.dumps(msg).encode()
        self.out += LENGTH.pack(len(payload)) + payload + data

    def flush_out(self, block=False):
        while self.out:
            try:
                n = os.write(1, self.out)
            except BlockingIOError:
                if not block:
                    return
                select.select([], [1], [])
                continue
            del self.out[:n]

    def path(self, rel):
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError("not a relative path inside the copy: %r" % rel)
        # Every parent must be a real directory of the copy: never write through a link.
        here = self.root
        for part in parts[:-1]:
            here = os.path.join(here, part)
            if os.path.islink(here):
                raise ValueError("a link on the way to %r" % rel)
        return os.path.join(self.root, *parts)

    def apply(self, msg, data):
        op = msg["op"]
        full = self.path(msg["path"])
        if op == "put":
            tmp = os.path.join(os.path.dirname(full), TMP + str(os.getpid()))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, msg["mode"])
                os.utime(fd, ns=(msg["mtime_ns"], msg["mtime_ns"]))
            finally:
                os.close(fd)
            if os.path.isdir(full) and not os.path.islink(full):
                remove_tree(full)
            os.replace(tmp, full)
        elif op == "mkdir":
            if os.path.lexists(full) and not (os.path.isdir(full) and not os.path.islink(full)):
                os.unlink(full)
            os.makedirs(full, exist_ok=True)
        elif op == "symlink":
            if os.path.isdir(full) and not os.path.islink(full):
                remove_tree(full)
            elif os.path.lexists(full):
                os.unlink(full)
            os.symlink(msg["target"], full)
        elif op == "remove":
            if os.path.isdir(full) and not os.path.islink(full):
                remove_tree(full)
            elif os.path.lexists(full):
                os.unlink(full)

    def get(self, rel):
        try:
            fd = os.open(self.path(rel), os.O_RDONLY | os.O_NOFOLLOW)
        except (OSError, ValueError):
            self.send({"op": "data", "path": rel, "size": 0, "meta": None})
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        m = meta(st, self.path(rel))
        if m is not None:
            m[1] = len(data)
        self.send({"op": "data", "path": rel, "size": len(data), "meta": m}, data)

    def messages(self):
        """Whole messages read so far, as (msg, data)."""
        while len(self.inbuf) >= 4:
            (length,) = LENGTH.unpack_from(self.inbuf)
            if len(self.inbuf) < 4 + length:
                return
            msg = json.loads(bytes(self.inbuf[4:4 + length]))
            size = msg.get("size", 0) if msg["op"] == "put" else 0
            if len(self.inbuf) < 4 + length + size:
                return
            data = bytes(self.inbuf[4 + length:4 + length + size])
            del self.inbuf[:4 + length + size]
            yield msg, data

    def run(self):
        # What the login shell printed before us is not ours: the launcher skips to this line.
        self.out += MARKER
        error = self.prepare()
        if error:
            self.send({"op": "error", "message": error})
            self.flush_out(block=True)
            return
        known = scan(self.root)
        self.send({"op": "index", "entries": known})
        self.flush_out(block=True)
        os.set_blocking(0, False)
        os.set_blocking(1, False)
        flush_asked = False
        next_scan = time.monotonic() + POLL
        while True:
            wait = max(0.0, next_scan - time.monotonic())
            readable, _, _ = select.select([0], [1] if self.out else [], [], wait)
            if readable:
                try:
                    chunk = os.read(0, 1 << 20)
                except BlockingIOError:
                    chunk = None
                if chunk == b"":
                    return
                self.inbuf += chunk or b""
                for msg, data in self.messages():
                    if msg["op"] == "get":
                        self.get(msg["path"])
                    elif msg["op"] == "flush":
                        flush_asked, next_scan = True, 0
                    else:
                        rel = msg["path"]
                        try:
                            there = entry_meta(self.root, rel) if self.path(rel) else None
                            if same(there, msg.get("expect")):
                                self.apply(msg, data)
                                self.send({"op": "applied", "path": rel})
                            else:
                                self.send({"op": "refused", "path": rel, "meta": there, "expected": msg.get("expect")})
                        except (OSError, ValueError) as e:
                            self.send({"op": "failed", "path": rel, "message": str(e)})
                        # What the launcher wrote is no change of the kernel's.
                        for k in [k for k in known if k == rel or k.startswith(rel + "/")]:
                            del known[k]
                        m = entry_meta(self.root, rel)
                        if m is not None:
                            known[rel] = m
            if time.monotonic() >= next_scan:
                now = scan(self.root)
                changed = {p: m for p, m in now.items() if known.get(p) != m}
                changed.update({p: None for p in known if p not in now})
                known = now
                if changed:
                    self.send({"op": "changed", "entries": changed})
                if flush_asked:
                    self.send({"op": "flushed"})
                    flush_asked = False
                next_scan = time.monotonic() + POLL
            self.flush_out()


def entry_meta(root, rel):
    full = os.path.join(root, *rel.split("/"))
    try:
        return meta(os.lstat(full), full)
    except OSError:
        return None


def remove_tree(path):
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def main():
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    Agent(sys.argv[1], sys.argv[2] == "ro").run()


main()
