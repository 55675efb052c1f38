# sshpyk remote supervisor, the kernel's start: its kernelspec, working directory, run
# directory, argv, transport and connection file. Sent ahead of supervisor.py in one source
# (see src/supervisor/session.rs), so it shares supervisor.py's namespace (`Fatal`, `CHANNELS`,
# `prctl`).
import json
import os
import signal
import socket
import sys
import tempfile


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


def kernel_cwd(cwd):
    """The kernel's working directory: `cwd` (`~` expanded) or the home directory."""
    path = os.path.expanduser(cwd or "~")
    if not os.path.isdir(path):
        raise Fatal("no_cwd", "remote working directory %s does not exist; create it or fix --remote-cwd with `sshpyk edit`" % path)
    return path


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


def write_connection_file(run_dir, start, transport):
    if transport == "ipc":
        ip, ports = os.path.join(run_dir, "k"), [1, 2, 3, 4, 5]
        endpoints = {c: "%s-%d" % (ip, p) for c, p in zip(CHANNELS, ports)}
    else:
        ip, ports = "127.0.0.1", free_tcp_ports(5)
        endpoints = dict(zip(CHANNELS, ports))
    info = {"transport": transport, "ip": ip, "key": start["key"], "signature_scheme": start["signature_scheme"], "kernel_name": start["kernel_name"]}
    info.update({"%s_port" % c: p for c, p in zip(CHANNELS, ports)})
    path = os.path.join(run_dir, "kernel.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return path, endpoints


def prepare_kernel():
    # We ignore SIGINT and SIGHUP; the kernel must get the defaults back (interrupts!).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # The kernel must not outlive its guard, even if the guard is killed with SIGKILL.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
