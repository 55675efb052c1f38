"""sshpyk demo: a remote kernel through a throwaway sshd, driven by jupyter_client.

As root the sshd runs in a network namespace of its own with its own address (a "remote" that
visibly is one: the kernel reports a different network namespace and address than this
machine's); otherwise on a loopback port.

Run through scripts/demo (which installs and builds first). Nothing outside a temporary
directory is touched, and nothing is left running.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSHPYK = os.environ.get("SSHPYK_BIN", os.path.join(ROOT, "target", "debug", "sshpyk"))
TESTHOST = os.environ.get("SSHPYK_TESTHOST_BIN", os.path.join(ROOT, "target", "debug", "sshpyk-testhost"))
VENV = sys.prefix

CODE = """\
import os, socket, subprocess, sys
print(f"hello from pid {os.getpid()} on {socket.gethostname()}, python {sys.version.split()[0]}")
addresses = subprocess.run(["ip", "-brief", "-4", "addr"], capture_output=True, text=True).stdout.split()
print(f"network namespace {os.readlink('/proc/self/ns/net')}, IPv4 {' '.join(a for a in addresses if '/' in a)}")
total = sum(i * i for i in range(10**6))
total
"""


def step(text):
    print(f"\n== {text}", flush=True)


def run(*args, env):
    print("$ " + " ".join(a.replace(ROOT, ".") for a in args), flush=True)
    subprocess.run(args, env=env, check=True)


def main():
    with tempfile.TemporaryDirectory(prefix="sshpyk-demo-") as tmp:
        env = dict(os.environ)
        for var, sub in [("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("SSHPYK_RUNTIME_DIR", "rt")]:
            env[var] = os.path.join(tmp, sub)
            # Private, as sshpyk wants its runtime dir (it refuses one others can enter).
            os.makedirs(env[var], mode=0o700)
        os.environ.update(env)
        remote_runtime = os.path.join(tmp, "remote-runtime")
        remote_home = os.path.join(tmp, "remote-home")
        os.makedirs(remote_home)
        step("starting a throwaway sshd to play the remote host")
        host = subprocess.Popen(
            [TESTHOST, "--mode", "auto", "--alias", "demo", "--sshd-option", f"SetEnv HOME={remote_home} JUPYTER_RUNTIME_DIR={remote_runtime}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            info = json.loads(host.stdout.readline())
            print(f"remote host 'demo' is {info['address']}:{info['port']} (ssh config {info['ssh_config']})")
            if info.get("netns"):
                print(f"it runs in network namespace '{info['netns']}'; this machine's is {os.readlink('/proc/self/ns/net')}")
            else:
                print("loopback mode (not root): the 'remote' shares this machine's network; run as root to give it its own")
            demo(info, env)
        finally:
            host.stdin.close()
            host.wait(timeout=30)
    print("\nall cleaned up.")


def demo(info, env):
    step("adding a kernelspec for the remote python3 kernel")
    run(SSHPYK, "add", "--ssh-host-alias", "demo", "--ssh-config", info["ssh_config"],
        "--remote-python-prefix", VENV, "--remote-kernel-name", "python3", env=env)
    step("checking it")
    run(SSHPYK, "list", "--remote", env=env)

    from jupyter_client.manager import start_new_kernel

    step("starting the kernel through sshpyk, as Jupyter does")
    started = time.monotonic()
    km, kc = start_new_kernel(kernel_name="ssh_demo_python3", startup_timeout=60)
    print(f"kernel ready in {time.monotonic() - started:.2f} s")
    try:
        step("running code in the remote kernel")
        print(CODE.rstrip())
        print("-- output --")

        def show(msg):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                print(content["text"], end="")
            elif msg["msg_type"] == "execute_result":
                print("Out:", content["data"]["text/plain"])
            elif msg["msg_type"] == "error":
                print("Error:", content["ename"], content["evalue"])

        reply = kc.execute_interactive(CODE, timeout=60, output_hook=show)
        if reply["content"]["status"] != "ok":
            raise SystemExit("the remote kernel reported an error")
    finally:
        step("shutting the kernel down")
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        print(f"kernel alive after shutdown: {km.is_alive()}")


if __name__ == "__main__":
    main()
