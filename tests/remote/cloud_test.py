"""src/remote/cloud.py on its own (no ssh, no server): the refusals before anything is mounted,
the private directory, rclone's error lines. Each failure must leave nothing behind.

Usage: python cloud_test.py SRC_REMOTE_DIR. Prints "ok: ..." per check; raises on failure.
"""
import atexit
import os
import shutil
import stat
import sys
import tempfile

exec(compile(open(os.path.join(sys.argv[1], "cloud.py")).read(), "cloud.py", "exec"))


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def refused(cloud, spec):
    try:
        cloud.mount(spec)
    except CloudError as e:
        return e.kind, str(e)
    raise AssertionError("mounted %r" % spec)


work = tempfile.mkdtemp()
atexit.register(shutil.rmtree, work, True)
cloud = CloudMounts(work)
spec = {"remote": os.path.join(work, "a", "b"), "source": "sshpyk:x", "config": "[sshpyk]\ntype = s3\n", "label": "s3:x", "flags": []}

path = os.environ["PATH"]
os.environ["PATH"] = "/nonexistent"
kind, message = refused(cloud, spec)
os.environ["PATH"] = path
check(kind == "no-rclone" and "apt install rclone fuse3" in message, "rclone missing: the install hint")
check(not os.path.exists(os.path.join(work, "a")), "nothing created when rclone is missing")

full = os.path.join(work, "full")
os.makedirs(full)
open(os.path.join(full, "keep"), "w").close()
kind, message = refused(cloud, dict(spec, remote=full))
check(kind == "not-empty" and full in message, "a non-empty mount point is refused")
check(os.listdir(full) == ["keep"], "and left as it was")
kind, _ = refused(cloud, dict(spec, remote="relative/path"))
check(kind == "not-dir", "a relative mount point is refused")
kind, message = refused(cloud, dict(spec, remote="/proc"))
check(kind == "busy" and "already a mount point" in message, "a mount point that is already a mount is refused")
check(cloud.mounts == {} and cloud.pids() == set(), "no mount recorded after refusals")

mine = private_dir()
top = os.path.dirname(mine)
check(stat.S_IMODE(os.stat(top).st_mode) == 0o700 and stat.S_IMODE(os.stat(mine).st_mode) == 0o700, "the config dir is 0700 in a 0700 dir")
check(top.startswith("/dev/shm/") or not os.path.isdir("/dev/shm"), "on /dev/shm")
os.rmdir(mine)

auth = "2026/11/30 15:27:46 ERROR : : error listing: SignatureDoesNotMatch: The request signature we calculated does not match.\n\tstatus code: 403, request id: x\n2026/11/30 15:27:46 Failed to lsf with 2 errors: last error was: SignatureDoesNotMatch: bad\n"
kind, message = classify("s3:b", auth)
check(kind == "auth" and "\n" not in message and message.count("SignatureDoesNotMatch") == 1, "refused credentials: one line")
kind, message = classify("s3:nob", "2026/11/30 15:27:38 Failed to lsf with 2 errors: last error was: error in ListJSON: directory not found\n")
check(kind == "missing" and message.startswith("s3:nob does not exist (Failed to lsf"), "a missing bucket: one line")
check(cloud.unmount("/nowhere") is False, "unmounting what is not mounted says so")
