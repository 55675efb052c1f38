"""sshpyk benchmark: a remote kernel through sshpyk next to a local ipykernel, same run, same machine.

Run through bench/run (which installs and builds first). The "remote" is a throwaway sshd from
sshpyk-testhost (in its own network namespace when root, else on loopback), reached under the
alias "bench"; the remote kernel is the same venv's ipykernel. Every figure is printed next to
the local baseline and an informational target; the script exits 0 whatever the figures are.

The core figures are also measured for the Python sshpyk from PyPI (same alias, same remote
venv), in a worker process run by its own venv's python (`--core-figures`): its kernelspec
names a kernel provisioner that only a python with that package installed can load.

The RTT profile repeats the core figures of ours and of the Python sshpyk against a second host
behind sshpyk-testhost's delay proxy (`--rtt-ms`, RTT_MS), and measures at both RTTs the first
answer after a link cut: a request sent while the link is down, timed from link-up to its reply.

Nothing outside a temporary directory is touched (Jupyter data/runtime/config dirs, HOME,
IPYTHONDIR and sshpyk's runtime dir all point into it), and nothing is left running.
"""
import argparse
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from time import perf_counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = sys.prefix
VENV_PYTHON = os.path.join(VENV, "bin", "python")
ALIAS = "bench"
SSH_KERNEL = "ssh_bench"
LOCAL_KERNEL = "local_bench"
PY_SSHPYK_KERNEL = "py_sshpyk_bench"
# The RTT profile's host: the same remote behind a delay proxy.
RTT_MS = 50
RTT_ALIAS = "bench-rtt"
SSH_KERNEL_RTT = "ssh_bench_rtt"
PY_SSHPYK_KERNEL_RTT = "py_sshpyk_bench_rtt"
CUT_SECONDS = 20.0
CUT_WAIT = 30.0  # after link-up, how long a reply may take before the request counts as lost
MANY_KERNELS = 20
READY_TIMEOUT = 60.0
EXEC_BLOCK = 25  # executions of `pass` in a row on one kernel


def log(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def read_proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def comm(pid):
    data = read_proc(pid, "comm")
    return data.decode(errors="replace").strip() if data is not None else None


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def parent_map():
    """pid -> ppid for every process now."""
    parents = {}
    for pid in all_pids():
        stat = read_proc(pid, "stat")
        if stat is None:
            continue
        # comm may contain spaces and parentheses: the fields after the last ')' are safe.
        fields = stat[stat.rindex(b")") + 2 :].split()
        parents[pid] = int(fields[1])
    return parents


def descendants(root):
    """root and every process below it, walking ppid links."""
    children = {}
    for pid, ppid in parent_map().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def status_kb(pid, field):
    data = read_proc(pid, "status")
    if data is None:
        return 0
    for line in data.decode().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pss_kb(pid):
    data = read_proc(pid, "smaps_rollup")
    if data is None:
        return 0
    for line in data.decode().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def memory(pids):
    """(RSS, PSS) in MB (10^6 bytes) summed over pids."""
    rss = sum(status_kb(p, "VmRSS") for p in pids)
    pss = sum(pss_kb(p) for p in pids)
    return rss * 1024 / 1e6, pss * 1024 / 1e6


def role(pid):
    """What a process in a kernel's path is, by its name and command line."""
    name = comm(pid) or "?"
    cmd = read_proc(pid, "cmdline") or b""
    if name == "ssh":
        if b"sshpyk-supervisor" in cmd:
            return "ssh (session)"
        if b"-W" in cmd.split(b"\0"):
            return "ssh -W"
        if b"ControlMaster=yes" in cmd:
            return "ssh master"
        return "ssh (relay channel)"
    if name.startswith("python") and b"sshpyk-supervisor" in cmd:
        return "supervisor"
    if name.startswith("python") and b"socket.AF_UNIX" in cmd:
        return "relay"
    return name


def describe_tree(pids):
    """'name×count RSS/PSS each' per kind of process in the tree."""
    kinds = {}
    for pid in pids:
        kinds.setdefault(role(pid), []).append(pid)
    parts = []
    for name, members in kinds.items():
        rss, pss = memory(members)
        n = len(members)
        count = f"×{n}" if n > 1 else ""
        each = " each" if n > 1 else ""
        parts.append(f"{name}{count} {rss / n:.1f}/{pss / n:.1f} MB{each}")
    return ", ".join(parts)


def cpu_seconds(pid):
    stat = read_proc(pid, "stat")
    if stat is None:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def remote_side(kernel, host_dir):
    """Processes on the remote for this kernel besides the kernel itself (sshd sessions,
    supervisor, relays), by role; empty for a local kernel."""
    if kernel["kernel_pid"] == kernel["pid"]:
        return {}
    listener = [p for p in all_pids() if comm(p) == "sshd" and host_dir.encode() in (read_proc(p, "cmdline") or b"")]
    groups = {}
    for pid in descendants(listener[0])[1:] if listener else []:
        if pid != kernel["kernel_pid"]:
            groups.setdefault(role(pid), []).append(pid)
    return groups


def cpu_groups(kernel, host_dir, runtime_dir):
    """The processes a kernel's messages pass through, by role, for CPU accounting."""
    groups = {"client (this python)": [os.getpid()], "kernel": [kernel["kernel_pid"]]}
    if kernel["kernel_pid"] == kernel["pid"]:
        return groups
    groups["launcher"] = [kernel["pid"]]
    for pid in descendants(kernel["pid"])[1:]:
        groups.setdefault(role(pid), []).append(pid)
    for pid in all_pids():
        cmd = read_proc(pid, "cmdline") or b""
        if comm(pid) == "ssh" and b"ControlMaster=yes" in cmd and runtime_dir.encode() in cmd:
            groups.setdefault("ssh master", []).append(pid)
    for name, pids in remote_side(kernel, host_dir).items():
        groups["remote " + name] = pids
    return groups


def cpu_snapshot(groups):
    return {role: sum(cpu_seconds(p) for p in pids) for role, pids in groups.items()}


class ExecWatch:
    """The Linux proc connector: every fork and exec on the machine, however short-lived the
    process (a 50 ms /proc poll can miss an `ssh -O check` that lives a few ms). Needs root
    (CAP_NET_ADMIN); `ExecWatch.start()` returns None where it is not available."""

    NETLINK_CONNECTOR, CN_IDX_PROC, NLMSG_DONE = 11, 1, 3
    LISTEN, IGNORE = 1, 2
    FORK, EXEC = 0x1, 0x2

    @classmethod
    def start(cls):
        try:
            return cls()
        except OSError:
            return None

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, self.NETLINK_CONNECTOR)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind((0, self.CN_IDX_PROC))
            self._control(self.LISTEN)
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.1)
        self.events = []  # (time, "fork", parent_tgid, child_tgid) | (time, "exec", tgid, (comm, cmdline))
        self.overrun = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _control(self, op):
        payload = struct.pack("I", op)
        cn = struct.pack("IIIIHH", self.CN_IDX_PROC, 1, 0, 0, len(payload), 0) + payload
        port = self.sock.getsockname()[0]
        self.sock.send(struct.pack("IHHII", 16 + len(cn), self.NLMSG_DONE, 0, 0, port) + cn)

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # ENOBUFS: events were lost
                self.overrun = True
                continue
            now = perf_counter()
            offset = 0
            while offset + 16 <= len(data):
                length = struct.unpack_from("I", data, offset)[0]
                event = offset + 16 + 20  # nlmsghdr + cn_msg
                if length < 16 + 20 + 16:
                    break
                what = struct.unpack_from("I", data, event)[0]
                body = event + 16  # what, cpu, timestamp
                if what == self.FORK:
                    _, parent_tgid, child_pid, child_tgid = struct.unpack_from("4I", data, body)
                    if child_pid == child_tgid:  # a process, not a thread
                        self.events.append((now, "fork", parent_tgid, child_tgid))
                elif what == self.EXEC:
                    _, tgid = struct.unpack_from("2I", data, body)
                    self.events.append((now, "exec", tgid, (comm(tgid), read_proc(tgid, "cmdline") or b"")))
                offset += (length + 3) & ~3

    def window(self, start, end, tree):
        """Execs in [start, end] as (time, pid, comm, in `tree` or forked from it, cmdline)."""
        tree = set(tree)
        execs = []
        for t, kind, a, b in list(self.events):
            if t < start or t > end:
                continue
            if kind == "fork" and a in tree:
                tree.add(b)
            elif kind == "exec":
                execs.append((t, a, b[0], a in tree, b[1]))
        return execs

    def close(self):
        self._stop.set()
        self._thread.join()
        try:
            self._control(self.IGNORE)
        except OSError:
            pass
        self.sock.close()


def ancestors(pid):
    """pid's parent chain (nearest first), as far as it can be read now."""
    chain = []
    while pid > 1 and len(chain) < 64:
        stat = read_proc(pid, "stat")
        if stat is None:
            break
        pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        chain.append(pid)
    return chain


def idle_window(seconds, kernels, markers):
    """Both kernels idle with a client connected, for `seconds`: polls /proc every 50 ms for new
    ssh processes and attributes each to a kernel (descends from its process, or, for sshpyk,
    names our host's ssh config or runtime dir on its command line: sshpyk's ssh clients all
    do). Other ssh processes on the machine (other users, other tests) are counted apart. With
    the proc connector, also every exec in each kernel's process tree, however short-lived."""
    # Only for the window: its thread shares the GIL with the client under test.
    watch = ExecWatch.start()
    if watch is None:
        log("the proc connector is not available (needs root): idle spawns by /proc polling only")
    try:
        return _idle_window(seconds, kernels, markers, watch)
    finally:
        if watch is not None:
            watch.close()


def _idle_window(seconds, kernels, markers, watch):
    roots = {key: k["pid"] for key, k in kernels.items()}
    trees = {key: descendants(pid) for key, pid in roots.items()}
    before = set(all_pids())
    seen = {}
    start = perf_counter()
    end = start + seconds
    while perf_counter() < end:
        for pid in all_pids():
            if pid in before or pid in seen or comm(pid) != "ssh":
                continue
            cmdline = read_proc(pid, "cmdline") or b""
            chain = ancestors(pid)
            owner = "other"
            for key, root in roots.items():
                if root in chain:
                    owner = key
            if owner == "other" and any(m.encode() in cmdline for m in markers):
                owner = "sshpyk"
            seen[pid] = owner
        time.sleep(0.05)
    stop = perf_counter()
    per_minute = 60.0 / (stop - start)
    result = {key: {"poll": sum(1 for o in seen.values() if o == key) * per_minute} for key in roots}
    result["other_ssh"] = sum(1 for o in seen.values() if o == "other") * per_minute
    if watch is not None:
        for key in roots:
            execs = watch.window(start, stop, trees[key])
            ours = [e for e in execs if e[2] == "ssh" and (e[3] or any(m.encode() in e[4] for m in markers))]
            if key == "local":
                ours = [e for e in execs if e[2] == "ssh" and e[3]]
            result[key]["cn_ssh"] = len(ours) * per_minute
            result[key]["cn_tree"] = sum(1 for e in execs if e[3]) * per_minute
            result[key]["cn_names"] = sorted({e[2] or "?" for e in execs if e[3]})
        result["cn_overrun"] = watch.overrun
    return result


# ---------------------------------------------------------------- Jupyter

# sshpyk's log lines that mark the phases of a start, in order.
PHASES = [
    ("connecting to", "launcher: connecting"),
    ("starting remote kernel", "launcher: master up, starting session"),
    ("forwarding ports", "launcher: kernel reported, forwarding"),
    ("ready: kernel pid", "launcher: ready"),
]


class StderrLog:
    """A kernel's stderr, through a pipe: each line goes to a file and gets a timestamp."""

    def __init__(self, path):
        self.path = path
        self.lines = []  # (perf_counter, text)
        self.read_fd, self.write_fd = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        buf = b""
        with open(self.path, "wb") as out, os.fdopen(self.read_fd, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    break
                now = perf_counter()
                out.write(data)
                out.flush()
                buf += data
                *lines, buf = buf.split(b"\n")
                self.lines.extend((now, line.decode(errors="replace")) for line in lines)

    def started(self):
        """The child has the write end: close ours, so the reader ends with the child."""
        os.close(self.write_fd)

    def phase_times(self, t0):
        """Seconds from t0 to the first line of each phase seen."""
        times = {}
        for t, text in list(self.lines):
            for needle, name in PHASES:
                if needle in text and name not in times:
                    times[name] = t - t0
        return times


def start_kernel(name):
    """A fresh KernelManager and connected client, as Jupyter starts a kernel; returns a dict
    with km, kc, pid, took (start_kernel() to wait_for_ready() returning), phases (seconds from
    the start to each phase in sshpyk's log) and kernel_info (requests wait_for_ready sent)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name)
    live = {"km": km, "kc": None}
    LIVE.append(live)
    stderr = StderrLog(os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], f"{name}-{len(KERNEL_LOGS)}.log"))
    KERNEL_LOGS.append(stderr.path)
    started = perf_counter()
    try:
        km.start_kernel(stderr=stderr.write_fd)
    finally:
        stderr.started()
    kc = live["kc"] = km.client()
    sent = [0]
    kernel_info = kc.kernel_info

    def counting_kernel_info():
        sent[0] += 1
        return kernel_info()

    kc.kernel_info = counting_kernel_info
    kc.start_channels()
    kc.wait_for_ready(timeout=READY_TIMEOUT)
    took = perf_counter() - started
    kc.kernel_info = kernel_info
    # The Python sshpyk's provisioner runs no local process: no pid to follow then.
    process = getattr(km.provisioner, "process", None)
    pid = process.pid if process is not None else None
    phases = stderr.phase_times(started)
    # When the kernel process itself (and, for sshpyk, the remote supervisor that started it)
    # came to be: the remote is this machine, so its pids are ours to read.
    kernel_pid = pid
    for _, text in stderr.lines:
        if "ready: kernel pid " in text:
            kernel_pid = int(text.split("ready: kernel pid ")[1].split()[0])
    supervisor = ancestors(kernel_pid)[:1] if kernel_pid else []
    if kernel_pid != pid and supervisor:
        phases["supervisor started"] = process_started(supervisor[0], started)
    if kernel_pid:
        phases["kernel process started"] = process_started(kernel_pid, started)
    phases["wait_for_ready returned"] = took
    transport = None
    for _, text in stderr.lines:
        if "forwarding ports" in text and text.rstrip().endswith(")"):
            transport = text.rstrip()[:-1].rsplit("(", 1)[-1]
    live.update(pid=pid, kernel_pid=kernel_pid, took=took, phases=phases, kernel_info=sent[0], transport=transport)
    return live


def process_started(pid, t0):
    """Seconds from t0 (a perf_counter time) to pid's start, to the kernel's 10 ms tick."""
    stat = read_proc(pid, "stat")
    if stat is None:
        return None
    ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return max(0.0, perf_counter() - age - t0)  # below 0 is the tick's rounding


def shutdown(kernel):
    """km.shutdown_kernel(now=False) with the client still connected; returns its duration."""
    km, kc = kernel["km"], kernel["kc"]
    started = perf_counter()
    km.shutdown_kernel(now=False)
    took = perf_counter() - started
    kc.stop_channels()
    LIVE.remove(kernel)
    return took


def execute(kc, code, on_iopub=None, timeout=120):
    """Sends execute_request and waits for iopub idle and execute_reply for it, as
    execute_interactive does; returns the reply."""
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if on_iopub is not None:
            on_iopub(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed in the kernel: {reply['content']}")
    return reply


def iopub_rate(kc, mb):
    """MB/s of stdout text received, from sending the cell to its iopub idle."""
    received = [0]

    def count(msg):
        if msg["msg_type"] == "stream":
            received[0] += len(msg["content"]["text"].encode())

    code = f"import sys\nfor _ in range({mb}): sys.stdout.write('x' * 1_000_000)"
    t0 = perf_counter()
    execute(kc, code, on_iopub=count)
    took = perf_counter() - t0
    if received[0] != mb * 1_000_000:
        raise RuntimeError(f"received {received[0]} bytes of stdout, expected {mb * 1_000_000}")
    return received[0] / 1e6 / took


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def alternating(keys, i):
    """Both kernels in turn, the order swapped every round, so that drifting load on the
    machine weighs on both alike."""
    return keys if i % 2 == 0 else keys[::-1]


def measure(kernel_names, opts, markers, cpu_dirs, before_cold_start):
    """Every figure for both kernels, measured side by side; returns {key: figures}."""
    keys = list(kernel_names)
    res = {key: {} for key in keys}
    running = {}
    for key in keys:
        if key == "sshpyk":
            before_cold_start()
        log(f"{key}: first start")
        k = running[key] = start_kernel(kernel_names[key])
        res[key]["start_first"] = k["took"]
        res[key]["phases_first"] = k["phases"]
        res[key]["kernel_info_first"] = k["kernel_info"]

    log(f"both: {opts.warmup} + {opts.executions} executions of `pass`, alternating in blocks of {EXEC_BLOCK}")
    times = {key: [] for key in keys}
    for block in range(-(-opts.executions // EXEC_BLOCK)):
        # In blocks, as a user runs cells in one kernel: switching kernels at every execution
        # slows both (about 4.5 -> 6 ms here for two local kernels). Each block has its warm-up.
        for key in alternating(keys, block):
            kc = running[key]["kc"]
            for _ in range(opts.warmup if block == 0 else 2):
                execute(kc, "pass")
            for _ in range(min(EXEC_BLOCK, opts.executions - block * EXEC_BLOCK)):
                t0 = perf_counter()
                execute(kc, "pass")
                times[key].append(perf_counter() - t0)
    for key in keys:
        t = sorted(times[key])
        res[key]["exec_p50"] = percentile(t, 0.5)
        res[key]["exec_p90"] = percentile(t, 0.9)

    time.sleep(0.5)  # idle, client connected
    for key in keys:
        pid = running[key]["pid"]
        tree = descendants(pid)
        res[key]["tree"] = describe_tree(tree)
        res[key]["rss_tree"], res[key]["pss_tree"] = memory(tree)
        res[key]["rss_root"], res[key]["pss_root"] = memory([pid])
        res[key]["remote_side"] = {name: (len(pids),) + memory(pids)
                                   for name, pids in remote_side(running[key], cpu_dirs[0]).items()}
        res[key]["transport"] = running[key]["transport"]

    log(f"both: {opts.iopub_reps} × {opts.iopub_mb} MB of stdout, alternating")
    rates = {key: [] for key in keys}
    groups = {key: cpu_groups(running[key], *cpu_dirs) for key in keys}
    cpu = {key: {role: 0.0 for role in groups[key]} for key in keys}
    for i in range(opts.iopub_reps):
        for key in alternating(keys, i):
            before = cpu_snapshot(groups[key])
            rates[key].append(iopub_rate(running[key]["kc"], opts.iopub_mb))
            after = cpu_snapshot(groups[key])
            for role in before:
                cpu[key][role] += (after[role] - before[role]) / opts.iopub_reps
    for key in keys:
        res[key]["iopub_cpu"] = cpu[key]
    time.sleep(0.5)
    for key in keys:
        res[key]["iopub"] = statistics.median(rates[key])
        res[key]["iopub_all"] = rates[key]
        res[key]["rss_tree_after"], _ = memory(descendants(running[key]["pid"]))

    log(f"both: idle for {opts.idle:g} s, counting ssh processes")
    groups = {key: cpu_groups(running[key], *cpu_dirs) for key in keys}
    for g in groups.values():
        del g["client (this python)"]  # busy polling /proc here
    before = {key: cpu_snapshot(groups[key]) for key in keys}
    idle_started = perf_counter()
    idle = idle_window(opts.idle, running, markers)
    idle_took = perf_counter() - idle_started
    for key in keys:
        after = cpu_snapshot(groups[key])
        res[key]["idle_cpu"] = {role: (after[role] - before[key][role]) * 60 / idle_took for role in after}
    for key in keys:
        res[key]["idle"] = idle[key]
    res["idle"] = idle

    # (On an error anywhere, main() shuts down whatever is still running.)
    for key, k in list(running.items()):
        res[key]["shutdown_first"] = shutdown(k)
        del running[key]

    for key in keys:
        res[key]["start_warm_all"], res[key]["shutdown_all"] = [], []
        res[key]["phases_warm"], res[key]["kernel_info_warm"] = [], []
    for i in range(opts.cycles):
        log(f"both: start/shutdown cycle {i + 1}/{opts.cycles}")
        for key in alternating(keys, i):
            k = running[key] = start_kernel(kernel_names[key])
            res[key]["start_warm_all"].append(k["took"])
            res[key]["phases_warm"].append(k["phases"])
            res[key]["kernel_info_warm"].append(k["kernel_info"])
            execute(k["kc"], "pass")
            res[key]["shutdown_all"].append(shutdown(k))
            del running[key]
    for key in keys:
        res[key]["start_warm"] = statistics.median(res[key]["start_warm_all"])
        res[key]["shutdown"] = statistics.median(res[key]["shutdown_all"])
    return res


def core_figures(kernel_name, opts):
    """Start (first and warm), `pass` round trips, iopub throughput and shutdown of one kernel
    measured alone; for the worker process (--core-figures)."""
    res = {}
    k = start_kernel(kernel_name)
    res["start_first"] = k["took"]
    for _ in range(opts.warmup):
        execute(k["kc"], "pass")
    times = []
    for _ in range(opts.executions):
        t0 = perf_counter()
        execute(k["kc"], "pass")
        times.append(perf_counter() - t0)
    times.sort()
    res["exec_p50"], res["exec_p90"] = percentile(times, 0.5), percentile(times, 0.9)
    res["iopub_all"] = [iopub_rate(k["kc"], opts.iopub_mb) for _ in range(opts.iopub_reps)]
    res["iopub"] = statistics.median(res["iopub_all"])
    res["shutdown_first"] = shutdown(k)
    res["start_warm_all"], res["shutdown_all"] = [], []
    for i in range(opts.cycles):
        log(f"worker: start/shutdown cycle {i + 1}/{opts.cycles}")
        k = start_kernel(kernel_name)
        res["start_warm_all"].append(k["took"])
        execute(k["kc"], "pass")
        res["shutdown_all"].append(shutdown(k))
    res["start_warm"] = statistics.median(res["start_warm_all"])
    res["shutdown"] = statistics.median(res["shutdown_all"])
    return res


class PySshpyk:
    """The Python sshpyk's kernel on one host: `add` once, then measurements by a worker under
    its venv's python (it prints one JSON line)."""

    def __init__(self, py_venv, ssh_config, tmp, alias, kernel_name):
        self.alias, self.kernel_name = alias, kernel_name
        self.version = self.error = None
        if not py_venv:
            self.error = "not installed (bench/run installs it in target/bench-py-sshpyk-venv)"
            return
        self.python = os.path.join(py_venv, "bin", "python")
        self.version = subprocess.run(
            [self.python, "-c", "import sshpyk.__version__ as v; print(v.__version__)"],
            capture_output=True, text=True).stdout.strip() or "?"
        # It requires `ControlMaster auto` in the alias's Host block (it drives the master with
        # -O): the same host and keys, plus a master of its own.
        self.config = os.path.join(tmp, f"py-sshpyk-ssh_config-{alias}")
        with open(ssh_config) as f, open(self.config, "w") as out:
            out.write(f.read() + f"    ControlMaster auto\n    ControlPath {tmp}/py-cm-%C\n    ControlPersist 600\n")
        add = subprocess.run(
            [os.path.join(py_venv, "bin", "sshpyk"), "add", "--kernel-name", kernel_name, "--language", "python",
             "--display-name", "Python sshpyk (bench)",
             "--ssh-host-alias", alias, "--ssh-config", self.config, "--remote-python", VENV_PYTHON,
             "--remote-kernel-name", "python3"],
            capture_output=True, text=True, timeout=120,
        )
        # Its first start must open its master itself, as ours does.
        self.close_master()
        if add.returncode != 0:
            self.error = f"`sshpyk add` failed: {(add.stderr or add.stdout).strip()[-500:]}"

    def close_master(self):
        subprocess.run(["ssh", "-F", self.config, "-O", "exit", self.alias], capture_output=True, timeout=10)

    def run(self, args, timeout):
        """(the worker's JSON, None) or (None, why there is none)."""
        if self.error is not None:
            return None, self.error
        try:
            run = subprocess.run([self.python, os.path.abspath(__file__)] + args, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "its kernel did not finish the measurements in time"
        finally:
            self.close_master()
        if run.returncode != 0 or not run.stdout.strip():
            return None, f"its kernel failed: {run.stderr.strip()[-1500:]}"
        return json.loads(run.stdout.strip().splitlines()[-1]), None

    def core_figures(self, opts):
        log(f"Python sshpyk {self.version}: measuring {self.kernel_name} alone in a worker")
        return self.run(["--core-figures", self.kernel_name] + (["--quick"] if opts.quick else []),
                        300 if opts.quick else 1200)

    def cut_figure(self, link):
        log(f"Python sshpyk: a {CUT_SECONDS:g} s link cut on {self.kernel_name}, in a worker")
        res, error = self.run(["--cut-figure", self.kernel_name, "--link", json.dumps(link)],
                              CUT_SECONDS + CUT_WAIT + 120)
        return (res["answer"], None) if res is not None else (None, error)


def run_link(argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def cut_figure(kernel_name, link):
    """Seconds from link-up to the execute_reply of a request sent in the middle of a
    CUT_SECONDS link cut, or None when none arrives within CUT_WAIT. `link` holds the
    sshpyk-testhost command lines `link_down` and `link_up`. The kernel is killed afterwards."""
    k = start_kernel(kernel_name)
    kc = k["kc"]
    try:
        execute(kc, "pass")
        run_link(link["link_down"])
        try:
            time.sleep(CUT_SECONDS / 2)
            msg_id = kc.execute("6 * 7")
            time.sleep(CUT_SECONDS / 2)
        finally:
            run_link(link["link_up"])
        up = perf_counter()
        while True:
            left = up + CUT_WAIT - perf_counter()
            if left <= 0:
                return None
            try:
                reply = kc.get_shell_msg(timeout=left)
            except queue.Empty:
                return None
            if reply["parent_header"].get("msg_id") == msg_id:
                return perf_counter() - up
    finally:
        kc.stop_channels()
        try:
            k["km"].shutdown_kernel(now=True)
        except Exception as e:  # whatever the cut left, the host's teardown ends it
            log(f"cut: killing the kernel failed: {e}")
        LIVE.remove(k)


def sshd_listener(host_dir):
    """The test host's listening sshd (its command line names the host's directory)."""
    found = [p for p in all_pids() if comm(p) == "sshd" and host_dir.encode() in (read_proc(p, "cmdline") or b"")]
    return min(found) if found else None


def many_at_once(kernel_name, count, host_dir):
    """`count` kernels started at once (threads), as a JupyterLab reopening a workspace does.
    Returns seconds until all were ready (None if any failed), the failures, and what the host's
    sshd saw. Counted on the sshd side: TCP connections are the listener's child sshd processes
    while all kernels are up (one privileged monitor per connection); sessions, the "Starting
    session" lines sshd (LogLevel VERBOSE) logs for each session channel it runs a command in,
    during the start; refusals, its "no more sessions" (MaxSessions) and "past MaxStartups"
    lines."""
    sshd_log = os.path.join(host_dir, "sshd.log")
    offset = os.path.getsize(sshd_log)
    kernels = [None] * count

    def start(i):
        try:
            kernels[i] = start_kernel(kernel_name)
        except Exception as e:  # reported below
            kernels[i] = e

    t0 = perf_counter()
    threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = perf_counter() - t0
    failures = [k for k in kernels if not isinstance(k, dict)]
    listener = sshd_listener(host_dir)
    connections = sum(1 for p, pp in parent_map().items() if pp == listener and comm(p) == "sshd")
    with open(sshd_log, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    res = {
        "took": None if failures else took,
        "failed": len(failures),
        "first_error": str(failures[0])[:300] if failures else None,
        "connections": connections,
        "sessions": text.count("Starting session:"),
        "refused": text.count("no more sessions") + text.count("past MaxStartups"),
    }
    stoppers = [threading.Thread(target=shutdown, args=(k,)) for k in kernels if isinstance(k, dict)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    return res


LIVE = []  # kernels (dicts with km, kc) that may be running
KERNEL_LOGS = []  # one stderr file per kernel started


# ---------------------------------------------------------------- the remote host


def ssh_master_exit(ssh_config, runtime_dir, alias=ALIAS):
    """Closes a ControlMaster sshpyk opened with its private ControlPath in runtime_dir."""
    for entry in os.listdir(runtime_dir) if os.path.isdir(runtime_dir) else []:
        if entry.startswith("cm-"):
            subprocess.run(
                ["ssh", "-F", ssh_config, "-o", f"ControlPath={os.path.join(runtime_dir, entry)}", "-O", "exit", alias],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
            )


def ssh_processes_under(path):
    """ssh processes whose command line mentions path (masters opened for our runtime dirs)."""
    found = []
    for pid in all_pids():
        if comm(pid) == "ssh" and path.encode() in (read_proc(pid, "cmdline") or b""):
            found.append(pid)
    return found


def start_testhost(testhost, mode, remote_env, alias=ALIAS, rtt_ms=0):
    proc = subprocess.Popen(
        [testhost, "--mode", mode, "--alias", alias, "--sshd-option", "SetEnv " + remote_env,
         "--rtt-ms", str(rtt_ms)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.stdin.close()
        proc.wait(timeout=30)
        return None, None
    return proc, json.loads(line)


def stop_testhost(proc):
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- report


def versions(mode):
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip().split(",")[0]
    import ipykernel
    import jupyter_client
    import zmq

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    cpu = f"{cpus} CPUs" if usable == cpus else f"{usable} of {cpus} CPUs usable"
    return (
        f"setup: remote via {mode}, {ssh_v}, Python {sys.version.split()[0]}, "
        f"ipykernel {ipykernel.__version__}, jupyter_client {jupyter_client.__version__}, "
        f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), {cpu}, {os.uname().release}"
    )


def table(local, remote, py, many, opts):
    """Rows for local | Python sshpyk | ours; `py` is None when the Python sshpyk has no figures."""
    rows = []
    py = py or {}
    local = dict(local, rss_root=None)  # a local kernel has no launcher

    def value(d, key):
        try:
            return key(d) if callable(key) else d.get(key)
        except KeyError:
            return None

    def row(metric, key, fmt, target=None, check=None, ratio=True, scale=1.0):
        lv, pv, rv = (value(d, key) for d in (local, py, remote))
        lv, pv, rv = ((v * scale if v is not None else None) for v in (lv, pv, rv))
        cells = [fmt.format(v) if v is not None else "n/a" for v in (lv, pv, rv)]
        ratios = [f"{v / lv:.2f}x" if ratio and lv and v is not None else "-" for v in (pv, rv)]
        if target is None:
            tg = "-"
        elif rv is None or lv is None:
            tg = f"{target}  n/a"
        else:
            tg = f"{target}  {'meets' if check(lv, pv, rv) else 'misses'}"
        rows.append((metric, *cells, *ratios, tg))

    ms = "{:.2f} ms"
    s = "{:.3f} s"
    mb = "{:.1f} MB"
    per_min = "{:.0f} /min"
    below_py = lambda p, r: p is None or r < p  # noqa: E731
    above_py = lambda p, r: p is None or r > p  # noqa: E731
    row("start->ready, first (no master yet)", "start_first", s)
    row(f"start->ready, warm (median of {opts.cycles})", "start_warm", s,
        "<= 1.2x local, < Python sshpyk", lambda l, p, r: r <= 1.2 * l and below_py(p, r))
    row(f"execute `pass` round trip p50 (n={opts.executions})", "exec_p50", ms, "<= 1.1x local",
        lambda l, p, r: r <= 1.1 * l, scale=1e3)
    row(f"execute `pass` round trip p90 (n={opts.executions})", "exec_p90", ms, scale=1e3)
    row(f"iopub throughput, {opts.iopub_mb} MB stdout (median of {opts.iopub_reps})", "iopub", "{:.1f} MB/s",
        ">= 0.95x local, > Python sshpyk", lambda l, p, r: r >= 0.95 * l and above_py(p, r))
    row(f"shutdown_kernel(now=False) (median of {opts.cycles})", "shutdown", s,
        "<= 2x local + 0.1 s", lambda l, p, r: r <= 2 * l + 0.1)
    row("RSS idle: kernel (local) | launcher tree (sshpyk)", "rss_tree", mb,
        "<= 10 MB", lambda l, p, r: r <= 10, ratio=False)
    row("RSS idle: launcher process alone", "rss_root", mb, "<= 10 MB", lambda l, p, r: r <= 10, ratio=False)
    row("PSS idle: same tree, shared pages split", "pss_tree", mb, ratio=False)
    row(f"RSS after the {opts.iopub_mb} MB outputs: same tree", "rss_tree_after", mb, ratio=False)
    row(f"ssh spawns while idle (/proc poll 50 ms, {opts.idle:g} s)", lambda d: d["idle"]["poll"], per_min,
        "0", lambda l, p, r: r == 0, ratio=False)
    if "cn_ssh" in remote["idle"]:
        row("ssh execs while idle (proc connector)", lambda d: d["idle"]["cn_ssh"], per_min, "0",
            lambda l, p, r: r == 0, ratio=False)
        row("any exec in the process tree while idle", lambda d: d["idle"]["cn_tree"], per_min, ratio=False)
    if many is not None:
        ready = (f"{many['took']:.2f} s" if many["took"] is not None
                 else f"{many['failed']}/{MANY_KERNELS} failed")
        rows.append((f"{MANY_KERNELS} kernels started at once: all ready", "-", "-", ready, "-", "-", "-"))
        rows.append((f"{MANY_KERNELS} at once: TCP connections / sessions (sshd side)", "-", "-",
                     f"{many['connections']} / {many['sessions']}", "-", "-", "-"))

    header = ("metric", "local ipykernel", "Python sshpyk", "sshpyk (ours)", "Py/local", "ours/local",
              "target for ours (informational)")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    align = ["<", ">", ">", ">", ">", ">", "<"]

    def fmt_row(r):
        return " | ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()

    lines = [fmt_row(header), "-+-".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in rows]
    return "\n".join(lines)


def phase_summary(first, warm):
    """'name cold | warm median' for each phase, in time order (of the warm medians)."""
    names = {name for p in [first] + warm for name, t in p.items() if t is not None}
    rows = []
    for name in names:
        w = [p[name] for p in warm if p.get(name) is not None]
        wm = statistics.median(w) if w else None
        rows.append((wm if wm is not None else first.get(name, 0), name, first.get(name), wm))
    rows.sort()
    fmt = lambda t: f"{t:.3f}" if t is not None else "?"  # noqa: E731
    return [f"{name} {fmt(c)} | {fmt(w)}" for _, name, c, w in rows]


def notes(local, remote, idle, opts, load):
    fmt = lambda ts: " ".join(f"{t:.3f}" for t in ts)  # noqa: E731
    out = [
        f"sshpyk launcher tree while idle (RSS/PSS): {remote['tree']}; kernel transport on the remote: "
        f"{remote['transport']}",
        "sshpyk on the remote besides the kernel, idle (RSS/PSS): "
        + ", ".join(f"{name}{'×' + str(n) if n > 1 else ''} {rss / n:.1f}/{pss / n:.1f} MB{' each' if n > 1 else ''}"
                    for name, (n, rss, pss) in remote["remote_side"].items()),
        f"warm starts (s): local {fmt(local['start_warm_all'])} | sshpyk {fmt(remote['start_warm_all'])}",
        f"shutdowns (s): local {fmt(local['shutdown_all'])} | sshpyk {fmt(remote['shutdown_all'])}"
        f" (first kernels: local {local['shutdown_first']:.3f}, sshpyk {remote['shutdown_first']:.3f});"
        " shutdown_kernel polls the process every 0.1 s, so these are quantised to about 0.1 s",
        f"iopub (MB/s): local {' '.join(f'{r:.1f}' for r in local['iopub_all'])}"
        f" | sshpyk {' '.join(f'{r:.1f}' for r in remote['iopub_all'])}",
        "CPU seconds per minute while idle, by process: local "
        + ", ".join(f"{role} {t:.2f}" for role, t in local["idle_cpu"].items())
        + " | sshpyk " + ", ".join(f"{role} {t:.2f}" for role, t in remote["idle_cpu"].items()),
        f"CPU seconds per {opts.iopub_mb} MB output run, by process: local "
        + ", ".join(f"{role} {t:.2f}" for role, t in local["iopub_cpu"].items())
        + " | sshpyk " + ", ".join(f"{role} {t:.2f}" for role, t in remote["iopub_cpu"].items()),
        "start, seconds from start_kernel() to each step (first | warm median):",
        "  local: " + "; ".join(phase_summary(local["phases_first"], local["phases_warm"])),
        "  sshpyk: " + "; ".join(phase_summary(remote["phases_first"], remote["phases_warm"])),
        f"kernel_info requests wait_for_ready sent: local first {local['kernel_info_first']}, warm "
        f"{local['kernel_info_warm']} | sshpyk first {remote['kernel_info_first']}, warm {remote['kernel_info_warm']}"
        " (each extra one costs 0.2 s or more: its iopub status was missed, so jupyter_client starts over)",
    ]
    if remote.get("master_rss") is not None:
        out.append(f"ControlMaster ssh (one per host, shared by its kernels, not in the tree): "
                   f"RSS {remote['master_rss']:.1f} MB, PSS {remote['master_pss']:.1f} MB")
    if remote["idle"].get("cn_names"):
        out.append("programs exec'd in the sshpyk tree while idle: " + ", ".join(remote["idle"]["cn_names"]))
    if "cn_ssh" in remote["idle"]:
        out.append("the 50 ms /proc poll misses processes that live less than that (a failing `ssh -O check` "
                   "lives a few ms); the proc connector rows see every exec")
    out.append(f"ssh processes of others on this machine during the idle window (not counted): "
               f"{idle['other_ssh']:.0f} /min; load average before/after: {load[0]} / {load[1]}")
    busy = float(load[0].split()[0])
    if busy > 0.5 * os.cpu_count():
        out.append(f"note: the machine was busy before the run (load {busy:.2f} on {os.cpu_count()} CPUs): "
                   "figures are noisier than on an idle machine")
    if idle.get("cn_overrun"):
        out.append("warning: the proc connector dropped events; its counts are lower bounds")
    return "\n".join(out)


def cut_figures(info, kernel_name, py_sshpyk, errors):
    """First answer after a link cut on `info`'s host, for ours and the Python sshpyk: seconds,
    None (lost) or "n/a" (no figure; why goes to errors)."""
    if not info.get("link_down"):
        errors.append("first answer after a cut: cutting the link needs a network namespace (root)")
        return {"ours": "n/a", "py": "n/a"}
    link = {"link_down": info["link_down"], "link_up": info["link_up"]}
    res = {}
    log(f"sshpyk: a {CUT_SECONDS:g} s link cut on {kernel_name}")
    try:
        res["ours"] = cut_figure(kernel_name, link)
    except Exception as e:  # a figure, never a failure
        errors.append(f"ours, cut: {e}")
        res["ours"] = "n/a"
    res["py"], error = py_sshpyk.cut_figure(link)
    if error is not None:
        errors.append(f"Python sshpyk, cut: {error}")
        res["py"] = "n/a"
    return res


def rtt_profile(testhost, mode, remote_env, sshpyk, add_env, tmp, opts, rtt_hosts):
    """The core figures and the cut figure of ours and the Python sshpyk on a second host behind
    sshpyk-testhost's delay proxy (RTT_MS), each kernel measured alone. Never raises: what
    failed goes to "errors"."""
    res = {"ours": None, "py": None, "cut": {"ours": "n/a", "py": "n/a"}, "errors": []}
    try:
        log(f"RTT profile: a host {RTT_MS} ms away (sshpyk-testhost's delay proxy)")
        proc, info = start_testhost(testhost, mode, remote_env, RTT_ALIAS, RTT_MS)
        if proc is None:
            res["errors"].append(f"the host {RTT_MS} ms away failed to start (see above)")
            return res
        rtt_hosts.append((proc, info["ssh_config"], RTT_ALIAS))
        subprocess.run(
            [sshpyk, "add", "--kernel-name", SSH_KERNEL_RTT, "--ssh-host-alias", RTT_ALIAS, "--ssh-config",
             info["ssh_config"], "--remote-python-prefix", VENV, "--remote-kernel-name", "python3"],
            env=add_env, check=True, stdout=subprocess.DEVNULL,
        )
        # A master of its own for this host: the first start below is cold.
        ssh_master_exit(info["ssh_config"], add_env["SSHPYK_RUNTIME_DIR"], RTT_ALIAS)
        log(f"sshpyk: measuring {SSH_KERNEL_RTT} alone")
        try:
            res["ours"] = core_figures(SSH_KERNEL_RTT, opts)
        except Exception as e:
            res["errors"].append(f"ours: {e}")
            shut_down_live_kernels()
        py_sshpyk = PySshpyk(opts.py_sshpyk_venv, info["ssh_config"], tmp, RTT_ALIAS, PY_SSHPYK_KERNEL_RTT)
        res["py"], error = py_sshpyk.core_figures(opts)
        if error is not None:
            res["errors"].append(f"Python sshpyk: {error}")
        res["cut"] = cut_figures(info, SSH_KERNEL_RTT, py_sshpyk, res["errors"])
    except Exception as e:
        res["errors"].append(f"RTT profile: {e}")
        shut_down_live_kernels()
    return res


def rtt_table(local, profiles, opts):
    """The core figures at each RTT side by side: local (no link), then Python sshpyk and ours
    per RTT, and issue 17's informational targets for ours at the longest RTT."""
    rtts = sorted(profiles)
    far = profiles[rtts[-1]]
    header = ["metric", "local ipykernel"]
    for rtt in rtts:
        header += [f"Python sshpyk {rtt} ms", f"ours {rtt} ms"]
    header.append(f"target for ours at {rtts[-1]} ms (informational)")

    def cell(d, key, fmt):
        v = d.get(key) if d else None
        return fmt.format(v) if v is not None else "n/a"

    def verdict(key, better):
        ours, py = (far[who].get(key) if far[who] else None for who in ("ours", "py"))
        if ours is None or py is None:
            return "n/a"
        return "meets" if better(ours, py) else "misses"

    rows = []
    core = [
        ("start->ready, first (no master yet)", "start_first", "{:.3f} s", 1, None, None),
        (f"start->ready, warm (median of {opts.cycles})", "start_warm", "{:.3f} s", 1,
         "<= Python sshpyk", lambda o, p: o <= p),
        (f"execute `pass` round trip p50 (n={opts.executions})", "exec_p50", "{:.2f} ms", 1e3,
         "<= Python sshpyk", lambda o, p: o <= p),
        (f"iopub throughput, {opts.iopub_mb} MB stdout (median of {opts.iopub_reps})", "iopub", "{:.1f} MB/s", 1,
         ">= Python sshpyk", lambda o, p: o >= p),
        (f"shutdown_kernel(now=False) (median of {opts.cycles})", "shutdown", "{:.3f} s", 1, None, None),
    ]
    for metric, key, fmt, scale, target, better in core:
        scaled = lambda d: {key: d[key] * scale} if d and d.get(key) is not None else None  # noqa: E731
        row = [metric, cell(scaled(local), key, fmt)]
        for rtt in rtts:
            row += [cell(scaled(profiles[rtt]["py"]), key, fmt), cell(scaled(profiles[rtt]["ours"]), key, fmt)]
        row.append(f"{target}  {verdict(key, better)}" if target else "-")
        rows.append(row)

    def answer(v):
        if v is None:
            return "lost"
        return v if isinstance(v, str) else f"{v:.2f} s"

    row = [f"first answer after a {CUT_SECONDS:g} s cut (link-up -> reply)", "-"]
    for rtt in rtts:
        row += [answer(profiles[rtt]["cut"]["py"]), answer(profiles[rtt]["cut"]["ours"])]
    ours_cut = far["cut"]["ours"]
    row.append("answered  " + ("n/a" if isinstance(ours_cut, str) else "misses" if ours_cut is None else "meets"))
    rows.append(row)

    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    align = ["<"] + [">"] * (len(header) - 2) + ["<"]

    def fmt_row(r):
        return " | ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()

    return "\n".join([fmt_row(header), "-+-".join("-" * w for w in widths)] + [fmt_row(r) for r in rows])


def rtt_notes(profiles):
    rtts = sorted(profiles)
    out = [
        f"0 ms: the figures above (ours measured side by side with local, the Python sshpyk alone); "
        f"{rtts[-1]} ms: a second host behind sshpyk-testhost's delay proxy (RTT/2 each way, no rate cap), "
        "each kernel measured alone; a local kernel has no link, so it has one column",
        f"first answer after a cut: the link down for {CUT_SECONDS:g} s, an execute_request sent "
        f"{CUT_SECONDS / 2:g} s into it, the time from link-up to its execute_reply; lost: none within "
        f"{CUT_WAIT:g} s; the cut is at sshd's end of the delayed path, so a request sent during it has already "
        "made its way there and the figure holds only the way back (RTT/2), not the whole RTT",
    ]
    for rtt in rtts:
        out += [f"{rtt} ms: no figure: {e}" for e in profiles[rtt]["errors"]]
    return "\n".join(out)


def shut_down_live_kernels():
    """Every kernel still running, however the run ended."""
    for kernel in list(LIVE):
        try:
            if kernel["kc"] is not None:
                kernel["kc"].stop_channels()
            kernel["km"].shutdown_kernel(now=True)
        except Exception as e:  # keep cleaning up
            log(f"cleanup: shutting down a kernel failed: {e}")
    LIVE.clear()


def worker(opts):
    """--core-figures or --cut-figure: the environment (Jupyter dirs, HOME) comes from the
    parent benchmark."""
    try:
        if opts.core_figures:
            res = core_figures(opts.core_figures, opts)
        else:
            res = {"answer": cut_figure(opts.cut_figure, json.loads(opts.link))}
        print(json.dumps(res), flush=True)
    finally:
        shut_down_live_kernels()


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations: 2 warm cycles, 50 executions, 2 × 20 MB iopub, 10 s idle window")
    parser.add_argument("--mode", choices=["netns", "loopback"],
                        help="where the remote sshd runs [default: netns when root, else loopback]")
    target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    parser.add_argument("--bin-dir", default=os.path.join(target_dir, "release"),
                        help="where sshpyk and sshpyk-testhost are [default: target/release]")
    parser.add_argument("--py-sshpyk-venv", help="the venv of the Python sshpyk from PyPI (third column)")
    parser.add_argument("--core-figures", metavar="KERNEL",
                        help="worker mode: measure KERNEL alone, print its figures as one JSON line")
    parser.add_argument("--cut-figure", metavar="KERNEL",
                        help="worker mode: KERNEL's first answer after a link cut, as one JSON line")
    parser.add_argument("--link", help="with --cut-figure: JSON with the link_down and link_up command lines")
    opts = parser.parse_args()
    if opts.quick:
        opts.cycles, opts.warmup, opts.executions, opts.iopub_mb, opts.iopub_reps, opts.idle = 2, 20, 50, 20, 2, 10.0
    else:
        opts.cycles, opts.warmup, opts.executions, opts.iopub_mb, opts.iopub_reps, opts.idle = 7, 20, 300, 20, 7, 30.0
    if opts.core_figures or opts.cut_figure:
        return worker(opts)
    sshpyk = os.path.join(opts.bin_dir, "sshpyk")
    testhost = os.path.join(opts.bin_dir, "sshpyk-testhost")

    # A SIGTERM/SIGHUP takes the same way out as an error: through the finally blocks.
    def stop(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    tmp = tempfile.mkdtemp(prefix="sshpyk-bench-")
    host = None
    rtt_hosts = []  # (testhost process, ssh_config, alias) of the RTT profile
    dirs = {}
    try:
        for sub in ["data", "runtime", "config", "home", "ipython", "rt-add", "rt",
                    "remote-runtime", "remote-data", "remote-ipython", "remote-home"]:
            dirs[sub] = os.path.join(tmp, sub)
            os.makedirs(dirs[sub], mode=0o700)
        env = {
            "JUPYTER_DATA_DIR": dirs["data"],
            "JUPYTER_RUNTIME_DIR": dirs["runtime"],
            "JUPYTER_CONFIG_DIR": dirs["config"],
            "SSHPYK_RUNTIME_DIR": dirs["rt"],
            "HOME": dirs["home"],
            "IPYTHONDIR": dirs["ipython"],
            "NO_COLOR": "1",
        }
        for var in ["JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "XDG_DATA_HOME",
                    "XDG_RUNTIME_DIR", "PYTHONSTARTUP"]:
            os.environ.pop(var, None)
        os.environ.update(env)

        # The remote host. Its sessions get their Jupyter/IPython dirs and HOME in our temp dir
        # too: the remote login shell then reads no ~/.bashrc of this machine's user, whose
        # cost (pyenv init, say) is not sshpyk's and would be charged to every ssh session.
        remote_env = (f"JUPYTER_RUNTIME_DIR={dirs['remote-runtime']} JUPYTER_DATA_DIR={dirs['remote-data']} "
                      f"IPYTHONDIR={dirs['remote-ipython']} HOME={dirs['remote-home']}")
        mode = opts.mode or ("netns" if os.geteuid() == 0 else "loopback")
        mode_note = ""
        if opts.mode is None and mode == "loopback":
            mode_note = " (not root: no network namespace, so the remote sshd runs on loopback)"
        log(f"starting the remote host ({mode})")
        host, info = start_testhost(testhost, mode, remote_env)
        if host is None and opts.mode is None and mode == "netns":
            mode, mode_note = "loopback", " (netns failed to start, see above: fell back to loopback)"
            log("netns host failed; falling back to loopback")
            host, info = start_testhost(testhost, mode, remote_env)
        if host is None:
            raise SystemExit("bench: sshpyk-testhost failed to start (see above)")
        ssh_config = info["ssh_config"]

        # Kernelspecs: sshpyk's (its remote check runs with a runtime dir of its own, whose
        # master is closed right after, so that the first start below is really cold) and a
        # local one pinned to this venv's python.
        add_env = dict(os.environ, SSHPYK_RUNTIME_DIR=dirs["rt-add"])
        subprocess.run(
            [sshpyk, "add", "--kernel-name", SSH_KERNEL, "--ssh-host-alias", ALIAS, "--ssh-config", ssh_config,
             "--remote-python-prefix", VENV, "--remote-kernel-name", "python3"],
            env=add_env, check=True, stdout=subprocess.DEVNULL,
        )
        ssh_master_exit(ssh_config, dirs["rt-add"])
        local_dir = os.path.join(dirs["data"], "kernels", LOCAL_KERNEL)
        os.makedirs(local_dir)
        with open(os.path.join(local_dir, "kernel.json"), "w") as f:
            json.dump({"argv": [VENV_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "local bench", "language": "python"}, f)

        def before_cold_start():
            stray = ssh_processes_under(tmp)
            if stray or os.listdir(dirs["rt"]):
                raise RuntimeError(f"a master exists before the cold start (ssh pids {stray}, "
                                   f"runtime dir {os.listdir(dirs['rt'])})")

        load_before = loadavg()
        res = measure({"local": LOCAL_KERNEL, "sshpyk": SSH_KERNEL}, opts,
                      [info["dir"], tmp], (info["dir"], dirs["rt"]), before_cold_start)
        local, remote = res["local"], res["sshpyk"]
        masters = [p for p in ssh_processes_under(dirs["rt"])
                   if b"ControlMaster=yes" in (read_proc(p, "cmdline") or b"")]
        if masters:
            remote["master_rss"], remote["master_pss"] = memory(masters)
        load_after = loadavg()

        py_sshpyk = PySshpyk(opts.py_sshpyk_venv, ssh_config, tmp, ALIAS, PY_SSHPYK_KERNEL)
        py, py_missing = py_sshpyk.core_figures(opts)
        py_version = py_sshpyk.version
        log(f"sshpyk: {MANY_KERNELS} kernels started at once")
        many = many_at_once(SSH_KERNEL, MANY_KERNELS, info["dir"])

        print(versions(mode) + mode_note + f", Python sshpyk {py_version or 'not installed'}")
        print()
        print(table(local, remote, py, many, opts))
        print()
        print(notes(local, remote, res["idle"], opts, (load_before, load_after)))
        if py is None:
            print(f"Python sshpyk: no figures: {py_missing}")
        else:
            fmt = lambda ts: " ".join(f"{t:.3f}" for t in ts)  # noqa: E731
            print(f"Python sshpyk (its kernel measured alone, after the other two, with its own master): warm "
                  f"starts (s) {fmt(py['start_warm_all'])}; shutdowns (s) {fmt(py['shutdown_all'])}; "
                  f"iopub (MB/s) {' '.join(f'{r:.1f}' for r in py['iopub_all'])}")
        print(f"{MANY_KERNELS} sshpyk kernels at once: "
              + (f"all ready in {many['took']:.2f} s" if many["took"] is not None
                 else f"{many['failed']} failed to start (first error: {many['first_error']})")
              + f"; sshd side: {many['connections']} TCP connections open while they ran, {many['sessions']} ssh "
              f"sessions started, {many['refused']} refusals (MaxSessions/MaxStartups) in its log", flush=True)

        near = {"ours": remote, "py": py, "errors": [] if py is not None else [f"Python sshpyk: {py_missing}"]}
        near["cut"] = cut_figures(info, SSH_KERNEL, py_sshpyk, near["errors"])
        far = rtt_profile(testhost, mode, remote_env, sshpyk, add_env, tmp, opts, rtt_hosts)
        print()
        print(f"RTT profile: 0 ms and {RTT_MS} ms")
        print()
        print(rtt_table(local, {0: near, RTT_MS: far}, opts))
        print()
        print(rtt_notes({0: near, RTT_MS: far}))
    except BaseException:
        for path in KERNEL_LOGS[-2:]:
            try:
                with open(path, errors="replace") as f:
                    text = f.read()[-4000:]
            except OSError:
                continue
            if text.strip():
                log(f"stderr of the kernel ({os.path.basename(path)}):\n{text}")
        raise
    finally:
        shut_down_live_kernels()
        if host is not None:
            for rt in ("rt-add", "rt"):
                try:
                    ssh_master_exit(ssh_config, dirs[rt])
                except Exception as e:
                    log(f"cleanup: closing the master failed: {e}")
            stop_testhost(host)
        for proc, config, alias in rtt_hosts:
            for rt in ("rt-add", "rt"):
                try:
                    ssh_master_exit(config, dirs[rt], alias)
                except Exception as e:
                    log(f"cleanup: closing the master failed: {e}")
            stop_testhost(proc)
        for pid in ssh_processes_under(tmp):
            log(f"cleanup: killing leftover ssh {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'SIGINT'}); cleaned up")
        sys.exit(130)
