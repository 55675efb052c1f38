"""Edge cases of a kernel's end, driven by jupyter_client as Jupyter servers drive it.

Usage: python lifecycle_edges.py SCENARIO KERNEL_NAME, SCENARIO one of:
  stuck-restart  a kernel busy in code that ignores SIGINT and SIGTERM is restarted
                 (restart_kernel: shutdown_request, SIGTERM at 2.5 s, SIGKILL at 5 s); the new
                 kernel answers. Prints "old-kernel-pid: N" (the remote pid before the restart).
  dead-client    starts a kernel, prints "launcher-pid: N", exits without shutting it down.
  independent    the same with independent=True (no JPY_PARENT_PID): the kernel must stay.
The Jupyter dirs come from the environment set by the Rust test.
"""
import os
import subprocess
import sys

from jupyter_client.manager import KernelManager, start_new_kernel

scenario, kernel = sys.argv[1], sys.argv[2]


if scenario == "stuck-restart":
    km, kc = start_new_kernel(kernel_name=kernel, startup_timeout=60)
    try:
        out = []
        kc.execute_interactive("import os; print(os.getpid())", timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
        print("old-kernel-pid:", "".join(out).strip(), flush=True)
        kc.execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)\n")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        out = []
        kc.execute_interactive("print(6 * 7)", timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
        assert "".join(out) == "42\n", out
        print("ok: the restarted kernel answers", flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
elif scenario in ("dead-client", "independent"):
    km = KernelManager(kernel_name=kernel)
    # Not our stdout: the kernel may outlive us, and the caller reads our output to its end.
    km.start_kernel(independent=scenario == "independent", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.stop_channels()
    print("launcher-pid:", km.provisioner.pid, flush=True)
    os._exit(0)
else:
    sys.exit("unknown scenario %s" % scenario)
