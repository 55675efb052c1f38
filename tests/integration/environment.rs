//! The remote environment of a kernel (`--remote-env`, `--remote-cwd`, `--remote-init`) end to
//! end: a real sshd, a login shell running the init snippet, a real ipykernel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, ready_client, Env};

const STEP: Duration = Duration::from_secs(20);
/// Literal: spaces, both quotes, a `$` and a backslash, none of which any shell may touch.
const GREETING: &str = r#"hello "double" 'single' $HOME \n and spaces"#;

/// A second Python environment (its own prefix) that still imports the test venv's packages, so
/// that no download is needed: a venv without pip plus a .pth file.
fn second_env(env: &Env) -> std::path::PathBuf {
    let dir = env.path("other-env");
    let status = Command::new(common::venv_python())
        .args(["-m", "venv", "--without-pip"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let site = |prefix: &Path| {
        let out = Command::new(prefix.join("bin/python"))
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    std::fs::write(
        Path::new(&site(&dir)).join("sshpyk-test.pth"),
        format!("{}\n", site(&common::venv())),
    )
    .unwrap();
    dir
}

fn add_args<'a>(env: &'a Env, extra: &[&'a str]) -> assert_cmd::Command {
    let mut cmd = env.sshpyk();
    cmd.args(["add", "--kernel-name", "k", "--ssh-host-alias", "remote"])
        .args(["--remote-kernel-name", "python3"])
        .arg("--ssh-config")
        .arg(env.ssh_config())
        .args(extra);
    cmd
}

#[tokio::test]
async fn a_kernel_runs_after_its_init_snippet_in_its_cwd_with_its_variables() {
    let env = Env::with_host();
    let other = second_env(&env);
    std::fs::create_dir_all(env.path("remote-home/work dir")).unwrap();
    // A bare `python3`: found on the PATH the init snippet set up, the other env's.
    let init = format!(
        "echo preparing\nPATH={}/bin:$PATH; export PATH",
        other.display()
    );
    let greeting = format!("GREETING={GREETING}");
    add_args(
        &env,
        &[
            "--remote-python",
            "python3",
            "--remote-init",
            &init,
            "--remote-cwd",
            "~/work dir",
            "--remote-env",
            &greeting,
            "--remote-env",
            "PATH_SEEN=yes",
        ],
    )
    .assert()
    .success();
    let stored = &env.read_kernel_json("k")["metadata"]["sshpyk"];
    assert_eq!(stored["remote_env"]["GREETING"], GREETING);
    assert_eq!(stored["remote_cwd"], "~/work dir");

    let list = env.sshpyk().args(["list", "-r"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("(v) remote init: the init snippet succeeds"),
        "{listed}"
    );
    assert!(listed.contains("(v) remote cwd: "), "{listed}");
    assert!(listed.contains("(v) remote python: python3"), "{listed}");

    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch("k", &conn);
    launcher.wait_ready(Duration::from_secs(60));
    let mut c = ready_client(&info).await;
    let r = c
        .execute(
            "import os, sys; print(sys.prefix); print(os.getcwd()); print(os.environ['GREETING']); print(os.environ['PATH_SEEN'])",
            STEP,
        )
        .await
        .unwrap();
    let expected = format!(
        "{}\n{}\n{GREETING}\nyes\n",
        other.display(),
        env.path("remote-home/work dir").display()
    );
    assert_eq!(r.stdout, expected, "{}", launcher.log());
    // The values went over stdin: no remote command line holds them.
    assert!(env.remote_processes("double").is_empty());
    c.close();

    // A reconnection runs the supervisor's own python again, without the snippet.
    let pid = launcher.remote_pid();
    env.close_master();
    launcher.wait_for_log("reconnected after", Duration::from_secs(20));
    let mut c = ready_client(&info).await;
    let r = c.execute("print(os.getpid())", STEP).await.unwrap();
    assert_eq!(r.stdout, format!("{pid}\n"));
    c.close();
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());
}

/// `add` with `extra` is refused with exit code 5, says `message`, and writes nothing.
fn assert_add_refused(env: &Env, extra: &[&str], message: &str) {
    let out = add_args(env, extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
    assert!(!env.kernel_dir("k").exists());
}

#[test]
fn a_failing_init_snippet_or_a_missing_cwd_is_one_clear_line() {
    let env = Env::with_host();
    let venv = common::venv();
    let venv = venv.to_string_lossy();
    let failing = "echo loading cuda\necho 'module: cuda/99 not found' >&2\nfalse";
    let failed = "the remote init snippet failed (exit status 1; last output: loading cuda | module: cuda/99 not found)";
    assert_add_refused(
        &env,
        &["--remote-python-prefix", &venv, "--remote-init", failing],
        &format!("{failed} on 'remote'"),
    );
    assert_add_refused(
        &env,
        &["--remote-python-prefix", &venv, "--remote-cwd", "~/nowhere"],
        "nowhere does not exist on 'remote'",
    );

    // Written while it worked, failing now: the launch says so in one line and leaves nothing;
    // `list` shows the same.
    add_args(
        &env,
        &["--remote-python-prefix", &venv, "--remote-init", "true"],
    )
    .assert()
    .success();
    env.change_settings("k", |s| s["remote_init"] = failing.into());
    let (code, log) = env.failed_launch("k");
    assert_eq!(code, Some(5), "{log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("sshpyk: error: {failed}")),
        "{log}"
    );
    assert!(env.remote_processes("sshpyk-supervisor").is_empty());
    assert!(env.remote_run_dirs().is_empty());
    let list = env.sshpyk().args(["list", "-r"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("(x) remote init: the remote init snippet failed (exit status 1"),
        "{listed}"
    );

    edit_removes_the_snippet_and_sets_variables(&env);
}

/// `edit` of kernel "k": removes the snippet with "", adds and clears variables.
fn edit_removes_the_snippet_and_sets_variables(env: &Env) {
    let edit = |args: &[&str]| {
        env.sshpyk()
            .args(["edit", "--kernel-name", "k"])
            .args(args)
            .assert()
            .success();
        env.read_kernel_json("k")["metadata"]["sshpyk"].clone()
    };
    let stored = edit(&["--remote-init", "", "--remote-env", "A=1"]);
    assert_eq!(
        (stored.get("remote_init"), &stored["remote_env"]["A"]),
        (None, &"1".into())
    );
    let stored = edit(&["--clear-remote-env", "--remote-env", "B=2"]);
    assert_eq!(stored["remote_env"], serde_json::json!({"B": "2"}));
}
