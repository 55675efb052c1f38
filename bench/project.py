"""sshpyk project-mount benchmark (issue 20): what a remote kernel gets from a local project
mounted with `--mount-local-on-remote`, at 0 ms and at 50 ms of RTT, beside the remote's own
disk measured in the same run. The project: a package of 200 small modules (imported by its
__init__) and 1,000 small data files.

Run through bench/run-project (which installs and builds first). The "remote" is a throwaway sshd
from sshpyk-testhost (its own network namespace when root), behind its userspace delay proxy
for the RTT. Modes: the default (a synced copy for a project this size) at every RTT; the lazy
sshfs mount (`:lazy`, the mode before the copy) at 0 ms only unless --lazy-rtt is given (at
50 ms it takes minutes: every file access is a round trip). Figures only; exits 0.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

from mounts import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MODULES = 200
FILES = 1000

TARGETS = {
    "import": ("first `import` of the 200-module package", 2.0),
    "read1": ("reading the 1,000 files, first time", 3.0),
    "read2": ("reading them again", 0.5),
    "edit": ("a local edit visible to the kernel", 1.5),
    "reimport": ("re-import after the edit", 0.5),
    "back": ("a remote write visible locally", 2.0),
    "last": ("a remote write made just before shutdown", None),
}


def make_project(root):
    pkg = os.path.join(root, "mypkg")
    os.makedirs(pkg)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        for i in range(MODULES):
            f.write(f"from . import m{i:03d}\n")
    for i in range(MODULES):
        with open(os.path.join(pkg, f"m{i:03d}.py"), "w") as f:
            f.write(f"VALUE = {i}\n\ndef f(x):\n    return x + VALUE\n" + "# padding\n" * 20)
    data = os.path.join(root, "data")
    for i in range(FILES):
        sub = os.path.join(data, str(i % 20))
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"d{i}.txt"), "w") as f:
            f.write(f"{i}\n" * 50)


IMPORT = """
import sys, time
sys.path.insert(0, {root!r})
t = time.perf_counter(); import mypkg; print(time.perf_counter() - t)
"""
READ = """
import os, time
t = time.perf_counter(); n = 0
for d, _, files in os.walk({data!r}):
    for name in files:
        with open(os.path.join(d, name)) as f:
            n += len(f.read())
print(time.perf_counter() - t)
"""
WAIT_EDIT = """
import time
end = time.time() + 30
while time.time() < end:
    try:
        if open({path!r}).read() == {text!r}:
            break
    except OSError:
        pass
    time.sleep(0.005)
print(time.time())
"""
REIMPORT = """
import importlib, time
t = time.perf_counter(); importlib.reload(mypkg.m007); print(time.perf_counter() - t, mypkg.m007.VALUE)
"""


class Kernel:
    def __init__(self, name):
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name=name, startup_timeout=600)

    def run(self, code, timeout=900):
        out = []
        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: out.append(m["content"].get("text", "")))
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"remote code failed: {reply['content'].get('evalue')}")
        return "".join(out).strip()

    def stop(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def measure(kernel, root, local_root):
    """The figures for a kernel that sees the project at `root` (`local_root`: where it is
    edited here; None for the remote's own disk)."""
    fig = {}
    fig["import"] = float(kernel.run(IMPORT.format(root=root)))
    fig["read1"] = float(kernel.run(READ.format(data=os.path.join(root, "data"))))
    fig["read2"] = float(kernel.run(READ.format(data=os.path.join(root, "data"))))
    if local_root is None:
        return fig
    # A local edit: the kernel waits for it; timed from the write here.
    text = "VALUE = 7777\n\ndef f(x):\n    return x + VALUE\n"
    path = os.path.join(root, "mypkg", "m007.py")
    msg_id = kernel.kc.execute(WAIT_EDIT.format(path=path, text=text))
    time.sleep(0.5)
    wrote = time.time()
    with open(os.path.join(local_root, "mypkg", "m007.py"), "w") as f:
        f.write(text)
    seen = None
    while seen is None:
        msg = kernel.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen = float(msg["content"]["text"])
    kernel.kc.get_shell_msg(timeout=60)
    fig["edit"] = seen - wrote
    took, value = kernel.run(REIMPORT).split()
    fig["reimport"] = float(took) if value == "7777" else float("nan")
    # A remote write, timed to when it is here.
    stamp = kernel.run(f"import time; open({os.path.join(root, 'back.txt')!r}, 'w').write('x'); print(time.time())")
    local = os.path.join(local_root, "back.txt")
    end = time.time() + 30
    while not os.path.exists(local) and time.time() < end:
        time.sleep(0.005)
    fig["back"] = time.time() - float(stamp) if os.path.exists(local) else float("nan")
    return fig


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rtt-ms", type=int, nargs="*", default=[0, 50])
    parser.add_argument("--lazy-rtt", type=int, nargs="*", default=[0], help="RTTs at which the lazy (sshfs) mount is measured too")
    args = parser.parse_args()
    results = {}
    for rtt in args.rtt_ms:
        for mode in ["sync", "lazy"] if rtt in args.lazy_rtt else ["sync"]:
            results[(rtt, mode)] = one_run(rtt, mode)
    print_table(args, results)


def one_run(rtt, mode):
    print(f"bench: {mode} at {rtt} ms", file=sys.stderr, flush=True)
    with bench_host("sshpyk-bench-project-", rtt) as (tmp, env, info, _):
        return run(tmp, env, info, mode)


def run(tmp, env, info, mode):
    project = os.path.join(tmp, "project")
    make_project(project)
    own_disk = os.path.join(tmp, "remote-disk")
    shutil.copytree(project, own_disk)
    mnt = os.path.join(tmp, "remote-mnt")
    spec = f"{project}:{mnt}" + (":lazy" if mode == "lazy" else "")
    subprocess.run([os.path.join(BIN, "sshpyk"), "add", "--kernel-name", "bench_project", "--ssh-host-alias", "bench",
                    "--ssh-config", info["ssh_config"], "--remote-python-prefix", sys.prefix, "--remote-kernel-name", "python3",
                    "--mount-local-on-remote", spec], env=env, check=True, stdout=subprocess.DEVNULL)
    os.environ.update(env)
    fig = {}
    t = time.perf_counter()
    kernel = Kernel("bench_project")
    fig["start"] = time.perf_counter() - t
    try:
        # The remote's own disk, in a kernel of its own (a fresh import).
        disk = measure(kernel, own_disk, None)
        kernel.run("import sys; [sys.modules.pop(m) for m in list(sys.modules) if m.startswith('mypkg')]")
        fig.update(measure(kernel, mnt, project))
        kernel.run(f"open({os.path.join(mnt, 'last.txt')!r}, 'w').write('last words')")
    finally:
        kernel.stop()
    fig["last"] = os.path.exists(os.path.join(project, "last.txt"))
    return disk, fig


def print_table(args, results):
    print(f"setup: remote via {'netns' if os.geteuid() == 0 else 'loopback'}, {os.cpu_count()} CPUs; project: {MODULES} modules + {FILES} files")
    cols = list(results)
    header = f"{'figure':<44} | " + " | ".join(f"{'own disk ' + str(r) + ' ms':>15} | {mode + ' ' + str(r) + ' ms':>14}" for r, mode in cols) + " | target at 50 ms"
    print(header)
    print("-" * len(header))
    for key, (label, target) in TARGETS.items():
        cells = []
        for col in cols:
            disk, fig = results[col]
            base = disk.get(key)
            cells.append(f"{fmt(base):>15} | {fmt(fig.get(key)):>14}")
        at50 = results.get((50, "sync"), (None, {}))[1].get(key)
        verdict = "-"
        if target is not None and isinstance(at50, float):
            verdict = f"<= {target} s {'meets' if at50 <= target else 'misses'}"
        elif target is None and at50 is not None:
            verdict = f"present {'meets' if at50 else 'misses'}"
        print(f"{label:<44} | " + " | ".join(cells) + f" | {verdict}")
    print(f"{'kernel start with the mount (copy included)':<44} | " + " | ".join(f"{'-':>15} | {fmt(results[c][1]['start']):>14}" for c in cols) + " | -")


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v != v:
        return "never"
    return f"{v:.3f} s"


if __name__ == "__main__":
    main()
