"""src/supervisor/cloud.py on its own (no ssh, no server): the refusals before anything is mounted,
the private directory, rclone's error lines. Each failure must leave nothing behind.

Usage: python cloud_test.py SRC_REMOTE_DIR. Prints "ok: ..." per check; raises on failure.
"""
import atexit
import json
import os
import shutil
import stat
import sys
import tempfile

exec(compile(open(os.path.join(sys.argv[1], "supervisor", "cloud.py")).read(), "cloud.py", "exec"))


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
cloud = CloudMounts()
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

mine, lock = private_dir()
check(stat.S_IMODE(os.stat(mine).st_mode) == 0o700 and os.stat(mine).st_uid == os.getuid(), "the config dir is 0700 and ours")
check(mine.startswith("/dev/shm/") or not os.path.isdir("/dev/shm"), "on /dev/shm")
live, live_lock = private_dir()
os.close(lock)  # as when its supervisor is SIGKILLed
CloudMounts()
check(not os.path.exists(mine) and os.path.isdir(live), "a new supervisor sweeps the private dirs of dead ones, not those in use")
shutil.rmtree(live)
os.close(live_lock)

# Squatters: another user's dirs named as ours (the old fixed name, one with our prefix) and a
# symlink of that prefix change nothing: we make our own, and the sweep touches none of theirs.
real_shm_dir = shm_dir
shm = os.path.join(work, "shm")
os.mkdir(shm)
os.chmod(shm, 0o1777)
shm_dir = lambda: shm  # noqa: E731 (private_dir and the sweep look it up by name)
if os.getuid() == 0:
    for name in ("sshpyk-0", "sshpyk-0-taken"):
        os.mkdir(os.path.join(shm, name), 0o755)
        open(os.path.join(shm, name, "lock"), "w").close()
        os.chown(os.path.join(shm, name, "lock"), 65534, 65534)
        os.chown(os.path.join(shm, name), 65534, 65534)
ours, ours_lock = private_dir()
made_here = os.path.dirname(ours) == shm and os.stat(ours).st_uid == os.getuid()
link = os.path.join(shm, private_prefix() + "link")
os.symlink(ours, link)
os.close(ours_lock)
CloudMounts()
left = sorted(n for n in os.listdir(shm) if n != os.path.basename(link))
check(made_here and not os.path.exists(ours) and os.path.islink(link) and left == (["sshpyk-0", "sshpyk-0-taken"] if os.getuid() == 0 else []),
      "squatted names are passed by; the sweep removes our stale dir, none of theirs, nothing through a symlink")
shm_dir = real_shm_dir

# The cache dir: one per store and path, whatever the credentials; a second mount of it at the
# same time gets another; the files rclone marks dirty are what is pending.
os.environ["XDG_CACHE_HOME"] = os.path.join(work, "cache")
store = dict(spec, config="[sshpyk]\ntype = s3\nendpoint = http://e\nsecret_access_key = one\n")
first, first_lock = cache_dir(store)
second, second_lock = cache_dir(dict(store, config=store["config"].replace("one", "two")))
check(second == first + "-1", "a store's cache dir is one, whatever the credentials, and a second mount at once gets another")
os.close(first_lock)
again, again_lock = cache_dir(dict(store, config=store["config"].replace("one", "three")))
other, other_lock = cache_dir(dict(store, source="sshpyk:y"))
check(again == first and other not in (first, second), "found again once free; another path has its own")
meta, data = (os.path.join(first, sub, "sshpyk", "dir") for sub in ("vfsMeta", "vfs"))
os.makedirs(meta)
os.makedirs(data)
for name, dirty in (("a.csv", True), ("b.csv", False), ("c.csv", False)):
    open(os.path.join(data, name), "w").close()
    with open(os.path.join(meta, name), "w") as f:
        json.dump({"Size": 1, "Dirty": dirty}, f)
    os.utime(os.path.join(data, name), ns=(1, 1))
    os.utime(os.path.join(meta, name), ns=(2, 2))
os.utime(os.path.join(data, "c.csv"), ns=(3, 3))  # written again, not yet marked dirty
open(os.path.join(data, "d.csv"), "w").close()  # no metadata yet
check(pending_uploads(first) == ["dir/a.csv", "dir/c.csv", "dir/d.csv"] and pending_uploads(other) == [], "pending: the files rclone has not uploaded, as paths in the store")
for fd in (second_lock, again_lock, other_lock):
    os.close(fd)

auth = "2026/11/30 15:27:46 ERROR : : error listing: SignatureDoesNotMatch: The request signature we calculated does not match.\n\tstatus code: 403, request id: x\n2026/11/30 15:27:46 Failed to lsf with 2 errors: last error was: SignatureDoesNotMatch: bad\n"
kind, message = classify("s3:b", auth)
check(kind == "auth" and "\n" not in message and message.count("SignatureDoesNotMatch") == 1, "refused credentials: one line")
kind, message = classify("s3:nob", "2026/11/30 15:27:38 Failed to lsf with 2 errors: last error was: error in ListJSON: directory not found\n")
check(kind == "missing" and message.startswith("s3:nob does not exist (Failed to lsf"), "a missing bucket: one line")
check(cloud.unmount("/nowhere") is None, "unmounting what is not mounted says so")
