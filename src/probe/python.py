# sshpyk probe: what `list` and `add` need to know about one remote python, as one JSON line.
import json, os, sys

facts = {"python": sys.executable, "version": sys.version.split()[0]}
# The kernel's working directory, when one is set (the only argument).
if len(sys.argv) > 1 and sys.argv[1]:
    facts["cwd"] = os.path.expanduser(sys.argv[1])
    facts["cwd_exists"] = os.path.isdir(facts["cwd"])
try:
    import jupyter_client
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import jupyter_runtime_dir
except Exception as e:
    facts["jupyter_client_error"] = "%s: %s" % (type(e).__name__, e)
else:
    facts["jupyter_client"] = jupyter_client.__version__
    specs = {}
    for name, entry in KernelSpecManager().get_all_specs().items():
        spec = entry.get("spec", {})
        specs[name] = {k: spec.get(k) for k in ("argv", "display_name", "language", "interrupt_mode")}
    facts["kernels"] = specs
    runtime = jupyter_runtime_dir()
    probe = runtime
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    facts["runtime_dir"] = runtime
    facts["runtime_dir_writable"] = os.access(probe, os.W_OK | os.X_OK)
# Warnings may share the output: the marker says where the facts start.
print("SSHPYK-FACTS" + json.dumps(facts))
