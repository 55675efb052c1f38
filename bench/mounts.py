"""sshpyk mount benchmark: what the remote kernel gets from a local directory mounted on it.

Run through bench/run-mounts (which installs and builds first). The "remote" is a throwaway sshd
in its own network namespace (loopback when not root). Figures, next to a baseline measured in
the same run over the same link: sequential read of a 256 MB file by the remote kernel through
the mount against `scp` of the same file to the remote; `find`+`stat` over 5,000 small files
through the mount against the same walk on the local disk. Exits 0 whatever the figures.
With --rtt-ms, the remote sits behind sshpyk-testhost's delay proxy: a link that long.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rtt-ms", type=int, default=0, help="round-trip time to the remote (delay proxy)")
    args = parser.parse_args()
    with bench_host("sshpyk-bench-mounts-", args.rtt_ms) as (tmp, env, info, mode):
        run(args, tmp, env, info, mode)


@contextlib.contextmanager
def bench_host(prefix, rtt_ms):
    """A temp dir standing in for every dir sshpyk and Jupyter touch, and a throwaway test host
    `rtt_ms` away (alias "bench"): yields (tmp, env, the host's JSON line, its mode)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = dict(os.environ)
        for var, sub in [("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("SSHPYK_RUNTIME_DIR", "rt"), ("HOME", "home")]:
            env[var] = os.path.join(tmp, sub)
            # Private, as sshpyk wants its runtime dir (it refuses one others can enter).
            os.makedirs(env[var], mode=0o700)
        remote_home = os.path.join(tmp, "remote-home")
        os.makedirs(remote_home)
        mode = "netns" if os.geteuid() == 0 else "loopback"
        host = subprocess.Popen(
            [os.path.join(BIN, "sshpyk-testhost"), "--mode", mode, "--alias", "bench",
             "--sshd-option", f"SetEnv HOME={remote_home} JUPYTER_RUNTIME_DIR={remote_home}/runtime",
             "--rtt-ms", str(rtt_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            yield tmp, env, json.loads(host.stdout.readline()), mode
        finally:
            host.stdin.close()
            host.wait(timeout=60)


def run(args, tmp, env, info, mode):
    export = os.path.join(tmp, "export")
    os.makedirs(os.path.join(export, "small"))
    big = os.path.join(export, "big.bin")
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.size_mb):
            f.write(chunk)
    for i in range(args.files):
        sub = os.path.join(export, "small", str(i % 50))
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i}.txt"), "w") as f:
            f.write("x" * 100)
    mnt = os.path.join(tmp, "remote-mnt")
    subprocess.run([os.path.join(BIN, "sshpyk"), "add", "--kernel-name", "bench_mount", "--ssh-host-alias", "bench",
                    "--ssh-config", info["ssh_config"], "--remote-python-prefix", sys.prefix, "--remote-kernel-name", "python3",
                    "--mount-local-on-remote", f"{export}:{mnt}"], env=env, check=True, stdout=subprocess.DEVNULL)
    os.environ.update(env)
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="bench_mount", startup_timeout=60)
    try:
        def remote(code):
            out = []
            reply = kc.execute_interactive(code, timeout=600, output_hook=lambda m: out.append(m["content"].get("text", "")))
            if reply["content"]["status"] != "ok":
                raise SystemExit(f"remote code failed: {reply['content']}")
            return "".join(out).strip()

        read_s = float(remote(f"""
import time
t = time.perf_counter()
with open({os.path.join(mnt, 'big.bin')!r}, 'rb', buffering=0) as f:
    while f.read(1 << 20):
        pass
print(time.perf_counter() - t)
"""))
        walk_code = """
import os, time
t = time.perf_counter(); n = 0
for d, _, files in os.walk({root!r}):
    for name in files:
        os.stat(os.path.join(d, name)); n += 1
print(time.perf_counter() - t, n)
"""
        walk_s, walked = remote(walk_code.format(root=os.path.join(mnt, "small"))).split()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    ssh = ["-F", info["ssh_config"]]
    t = time.perf_counter()
    subprocess.run(["scp", "-q", *ssh, big, f"bench:{tmp}/remote-home/scp.bin"], check=True)
    scp_s = time.perf_counter() - t
    os.unlink(os.path.join(tmp, "remote-home", "scp.bin"))
    t = time.perf_counter()
    n = 0
    for d, _, files in os.walk(os.path.join(export, "small")):
        for name in files:
            os.stat(os.path.join(d, name))
            n += 1
    local_walk = time.perf_counter() - t

    mb = args.size_mb
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    print(f"setup: remote via {mode}, {args.rtt_ms} ms RTT, {out}, {os.cpu_count()} CPUs")
    print(f"{'metric':<46} | {'baseline':>16} | {'sshpyk mount':>14} | ratio | target")
    print("-" * 46 + "-+-" + "-" * 16 + "-+-" + "-" * 14 + "-+-------+----------------")
    ratio = (mb / read_s) / (mb / scp_s)
    print(f"{'sequential read, ' + str(mb) + ' MB (baseline: scp)':<46} | {mb / scp_s:>11.1f} MB/s | {mb / read_s:>9.1f} MB/s | {ratio:.2f}x | >= 0.8x {'meets' if ratio >= 0.8 else 'misses'}")
    print(f"{'find+stat ' + walked + ' files (baseline: local disk)':<46} | {local_walk:>14.3f} s | {float(walk_s):>12.3f} s | {float(walk_s) / local_walk:.0f}x | -")


if __name__ == "__main__":
    main()
