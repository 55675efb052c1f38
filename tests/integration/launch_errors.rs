//! Every way a launch can go wrong gives one clear line, a documented exit code, and leaves
//! nothing behind (no remote process, no remote file, no bound port).

use std::time::Duration;

use crate::common::{self, eventually, port_is_free, Env};

/// Launches kernel `k` after `change` edited its settings; returns (exit code, last log line).
fn launch_with(env: &Env, change: impl FnOnce(&mut serde_json::Value)) -> (Option<i32>, String) {
    env.change_settings("k", change);
    let (conn, info) = env.connection_file(&uuid::Uuid::new_v4().to_string());
    let mut launcher = env.launch("k", &conn);
    let status = launcher
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the launcher did not give up:\n{}", launcher.log()));
    let log = launcher.log();
    let last = log.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("sshpyk: error: "), "{log}");
    assert_eq!(log.matches("sshpyk: error").count(), 1, "{log}");
    for (_, port) in info.ports() {
        assert!(port_is_free(port), "port {port} left bound");
    }
    // The supervisor reports the error just before its interpreter ends.
    let clean = || {
        env.remote_processes("sshpyk-supervisor").is_empty()
            && env.remote_processes("ipykernel").is_empty()
            && env.remote_run_dirs().is_empty()
    };
    assert!(
        eventually(Duration::from_secs(3), clean),
        "remote leftovers after: {last}"
    );
    (status.code(), last)
}

#[test]
fn launch_failures_are_clear_and_leave_nothing() {
    let env = Env::with_host();
    env.add_kernel("k", &["--launch-timeout", "10"]);
    let original = env.read_kernel_json("k")["metadata"]["sshpyk"].clone();
    // Nothing listens on its port.
    let refused = env.path("refused_config");
    std::fs::write(
        &refused,
        format!(
            "Host remote\n  HostName 127.0.0.1\n  Port {}\n",
            sshpyk_testhost::free_port()
        ),
    )
    .unwrap();
    // Same host, a key it does not accept: authentication fails without a prompt (once the
    // master that `add` opened, which would be reused, is closed).
    env.close_master();
    let bad_auth = env.ssh_config_with_an_unknown_key("bad_auth_config");
    let (refused, bad_auth) = (refused.to_str().unwrap(), bad_auth.to_str().unwrap());
    let connect_hint = format!("run `sshpyk connect remote --ssh-config {bad_auth}` once");
    // One setting changed from the good kernel's: the exit code, what the error line says.
    let cases: [(&str, &str, i32, &[&str]); 6] = [
        ("ssh_config", refused, 4, &["refused the connection"]),
        (
            "ssh_config",
            bad_auth,
            4,
            &["authentication to 'remote'", &connect_hint],
        ),
        (
            "remote_python",
            "/nonexistent/bin/python",
            5,
            &["remote python '/nonexistent/bin/python' does not exist"],
        ),
        (
            "remote_python",
            "/usr/bin/python3",
            5,
            &["cannot import jupyter_client"],
        ),
        (
            "remote_kernel_name",
            "nope",
            5,
            &["remote kernel 'nope' not found; available: ", "python3"],
        ),
        (
            "ssh",
            "/nonexistent/ssh",
            3,
            &["ssh client '/nonexistent/ssh' not found"],
        ),
    ];
    for (setting, value, code, needles) in cases {
        let (got, line) = launch_with(&env, |s| {
            *s = original.clone();
            s[setting] = value.into();
        });
        assert_eq!(got, Some(code), "{setting} = {value}: {line}");
        for needle in needles {
            assert!(line.contains(needle), "{setting} = {value}: {line}");
        }
    }
}

#[test]
fn an_unwritable_remote_runtime_dir_is_reported() {
    let env = Env::remote_host()
        .session_env("JUPYTER_RUNTIME_DIR", |env| {
            env.new_dir("remote-data/runtime")
        })
        .build();
    let runtime = env.path("remote-data/runtime");
    env.add_kernel("k", &[]);
    // A runtime dir that is a regular file can never be used, even by root.
    std::fs::remove_dir(&runtime).unwrap();
    std::fs::write(&runtime, "").unwrap();

    let (code, line) = launch_with(&env, |_| {});
    assert_eq!(code, Some(5));
    assert!(
        line.contains("remote runtime dir") && line.contains("is not writable"),
        "{line}"
    );
    env.sshpyk()
        .args(["edit", "--kernel-name", "k", "--launch-timeout", "11"])
        .assert()
        .code(5)
        .stderr(predicates::str::contains("is not writable"));
}

#[test]
fn a_kernel_that_never_listens_is_bounded_and_cleaned_up() {
    let env = Env::with_host();
    let spec_dir = env.path("remote-data/kernels/stuck");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let spec = serde_json::json!({
        "argv": [common::venv_python(), "-c", "import time; time.sleep(600)  # stuck kernel", "{connection_file}"],
        "display_name": "Stuck", "language": "python",
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string()).unwrap();
    env.add_command("stuck", &["--kernel-name", "k", "--launch-timeout", "3"])
        .assert()
        .success();
    let (code, line) = launch_with(&env, |_| {});
    assert_eq!(code, Some(6), "{line}");
    assert!(line.contains("did not finish within 3 s"), "{line}");
    assert!(
        env.remote_processes_end("stuck kernel", Duration::from_secs(5)),
        "the stuck kernel was left running"
    );
}
