//! Living beside Jupyter and the Python sshpyk: `list` sees what Jupyter sees, Python-sshpyk
//! kernelspecs are recognised and adopted, `edit` says what it changes, mixed-up flags are named.

use std::path::Path;

use crate::common::{self, json_of, Env};
use predicates::prelude::*;

/// A kernel.json exactly as the Python sshpyk 1.25's `sshpyk add` writes it, for the test host.
fn write_python_sshpyk_kernel(env: &Env, name: &str) {
    let dir = env.kernel_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "argv": [
            "/opt/py-sshpyk/bin/python3",
            "/opt/py-sshpyk/bin/sshpyk-kernel",
            format!("--SSHKernelApp.kernel_name={name}"),
            "--KernelManager.connection_file='{connection_file}'"
        ],
        "display_name": "Remote Python (py-sshpyk)",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "sshpyk-provisioner",
                "config": {
                    "ssh": null,
                    "ssh_host_alias": "remote",
                    "remote_python": env.remote_venv.join("bin/python"),
                    "remote_kernel_name": "python3",
                    "ssh_config": env.ssh_config(),
                    "launch_timeout": 45
                }
            }
        }
    });
    std::fs::write(
        dir.join("kernel.json"),
        serde_json::to_string_pretty(&spec).unwrap(),
    )
    .unwrap();
}

/// `list` shows kernel "ssh_remote_python3" as the Python sshpyk's, with the command that
/// adopts it; so does `list --json`.
fn assert_listed_as_python_sshpyks(env: &Env) {
    let out = env.sshpyk().args(["list", "--no-check"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("local kernels\n  (none)\nPython sshpyk kernels\n  ssh_remote_python3"),
        "{text}"
    );
    assert!(
        text.contains("written by the Python sshpyk (ssh remote → "),
        "{text}"
    );
    assert!(
        text.contains("`sshpyk edit --kernel-name ssh_remote_python3 --adopt`"),
        "{text}"
    );
    let report = json_of(env.sshpyk().args(["list", "--json", "-n"]));
    assert_eq!(report["kernels"][0]["python_sshpyk"], true);
    assert_eq!(report["kernels"][0]["sshpyk"], false);
}

/// The adopted kernel.json runs this sshpyk with the Python sshpyk's settings, and no
/// provisioner.
fn assert_adopted_spec(env: &Env) {
    let spec = env.read_kernel_json("ssh_remote_python3");
    assert_eq!(spec["argv"][0], env!("CARGO_BIN_EXE_sshpyk"));
    assert_eq!(spec["display_name"], "Remote Python (py-sshpyk)");
    assert_eq!(spec["interrupt_mode"], "signal");
    assert!(
        spec["metadata"].get("kernel_provisioner").is_none(),
        "{spec}"
    );
    let settings = &spec["metadata"]["sshpyk"];
    assert_eq!(settings["ssh_host_alias"], "remote");
    assert_eq!(settings["remote_kernel_name"], "python3");
    assert_eq!(settings["launch_timeout"], 45.0);
    assert_eq!(
        settings["remote_python"],
        env.remote_venv.join("bin/python").to_str().unwrap()
    );
}

#[tokio::test]
async fn a_python_sshpyk_kernelspec_is_listed_then_adopted_and_runs() {
    let env = Env::with_host();
    write_python_sshpyk_kernel(&env, "ssh_remote_python3");
    assert_listed_as_python_sshpyks(&env);

    env.sshpyk()
        .args(["delete", "ssh_remote_python3"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "was written by the Python sshpyk; pass --force",
        ));
    // Not edited behind its back.
    env.sshpyk()
        .args(["edit", "--kernel-name", "ssh_remote_python3", "--launch-timeout", "9"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("written by the Python sshpyk; convert it with `sshpyk edit --kernel-name ssh_remote_python3 --adopt`"));

    env.sshpyk()
        .args(["edit", "--kernel-name", "ssh_remote_python3", "--adopt"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "adopted kernel 'ssh_remote_python3' (\"Remote Python (py-sshpyk)\") from the Python sshpyk",
        ))
        .stdout(predicate::str::contains("now runs this sshpyk"));
    assert_adopted_spec(&env);
    env.sshpyk()
        .args(["list", "-r"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "sshpyk kernels\n  ssh_remote_python3",
        ))
        .stdout(predicate::str::contains("(x)").not());
    // A second --adopt is refused: it is ours now.
    env.sshpyk()
        .args(["edit", "--kernel-name", "ssh_remote_python3", "--adopt"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("already an sshpyk kernel"));

    // And it runs.
    common::runs_and_stops(&env, "ssh_remote_python3").await;
}

#[test]
fn edit_says_when_there_is_nothing_to_change_and_when_it_repoints_argv() {
    let env = Env::with_host();
    env.add_kernel("k", &[]);
    let before = std::fs::read(env.kernel_dir("k").join("kernel.json")).unwrap();
    env.sshpyk()
        .args(["edit", "--kernel-name", "k"])
        .assert()
        .success()
        .stdout(predicate::str::contains("kernel 'k': nothing to change"));
    assert_eq!(
        std::fs::read(env.kernel_dir("k").join("kernel.json")).unwrap(),
        before
    );

    // Another installation of sshpyk (a copy elsewhere) says that it takes the kernel over.
    let other = env.path("other-install/sshpyk");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_sshpyk"), &other).unwrap();
    let mut cmd = std::process::Command::new(&other);
    env.apply(&mut cmd);
    cmd.args(["edit", "--kernel-name", "k"]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!(
            "kernel 'k' now runs this sshpyk, {} (it ran {})",
            other.display(),
            env!("CARGO_BIN_EXE_sshpyk")
        )),
        "{stdout}"
    );
    assert_eq!(
        env.read_kernel_json("k")["argv"][0],
        other.to_str().unwrap()
    );
}

/// `sshpyk add` of python3 on the test host with one python flag, `flag path`.
fn add_with_python_flag(env: &Env, flag: &str, path: &Path) -> assert_cmd::assert::Assert {
    env.add_on("remote", "python3")
        .arg("--ssh-config")
        .arg(env.ssh_config())
        .arg(flag)
        .arg(path)
        .assert()
}

#[test]
fn mixed_up_python_flags_name_the_flag_that_was_meant() {
    let env = Env::with_host();
    let python = env.remote_venv.join("bin/python");
    add_with_python_flag(&env, "--remote-python-prefix", &python)
        .code(3)
        .stderr(predicate::str::contains(format!(
        "--remote-python-prefix {} is an interpreter, not an environment: pass --remote-python {} (or --remote-python-prefix {})",
        python.display(),
        python.display(),
        env.remote_venv.display()
    )));
    add_with_python_flag(&env, "--remote-python", &env.remote_venv)
        .code(3)
        .stderr(predicate::str::contains(format!(
        "remote python {} is a directory on 'remote': for an environment pass --remote-python-prefix {}",
        env.remote_venv.display(),
        env.remote_venv.display()
    )));
    assert!(
        !env.path("data/kernels").exists()
            || std::fs::read_dir(env.path("data/kernels"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// PATH with `dir` first.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// With the venv's `jupyter` on PATH (what `source venv/bin/activate` gives, without
/// VIRTUAL_ENV), `list` sees the venv's own python3 kernel as Jupyter does.
#[test]
fn list_uses_the_search_path_of_the_jupyter_on_path() {
    let env = Env::local();
    let venv = common::venv();
    let mut cmd = env.sshpyk();
    cmd.env("PATH", path_with(&venv.join("bin")))
        .args(["list", "-l"]);
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    // The venv's kernel, wherever the venv says it lives (a copied venv's `jupyter` script
    // still names the python it was made with).
    let row = text
        .lines()
        .find_map(|l| l.strip_prefix("  python3  \"Python 3 (ipykernel)\"  python  "))
        .unwrap_or_else(|| panic!("the venv's python3 kernel is not listed: {text}"));
    assert!(row.ends_with("/share/jupyter/kernels/python3"), "{row}");
    assert!(Path::new(row).join("kernel.json").is_file(), "{row}");
}

/// Without a jupyter on PATH: the environment of the python on PATH.
#[test]
fn without_jupyter_list_uses_the_environment_of_the_python_on_path() {
    let env = Env::local();
    let bare = env.path("bare-venv");
    let made = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(made.success());
    assert!(!bare.join("bin/jupyter").exists());
    let kernel = bare.join("share/jupyter/kernels/bare");
    std::fs::create_dir_all(&kernel).unwrap();
    std::fs::write(kernel.join("kernel.json"), r#"{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Bare", "language": "python"}"#).unwrap();
    // Only this venv's python and the system's tools, so that no other jupyter answers.
    let path = std::env::join_paths([bare.join("bin"), "/usr/bin".into(), "/bin".into()]).unwrap();
    let mut cmd = env.sshpyk();
    cmd.env("PATH", path).args(["list", "-l"]);
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("  bare  \"Bare\"  python  {}", kernel.display())),
        "{text}"
    );
}
