//! Per-kernel logs: the launcher's stderr lines carry the kernel's name, each run is also
//! written to a private file that `sshpyk logs` shows (and follows), and `--log-level` stored
//! in the kernelspec sets the verbosity without touching kernel.json by hand.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{eventually, Env, Launcher};
use predicates::prelude::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_run_logs_prefixed_lines_and_a_private_file_that_logs_shows_and_follows() {
    let env = Env::with_host();
    env.add_kernel("k", &["--log-level", "debug"]);
    assert_eq!(
        env.read_kernel_json("k")["metadata"]["sshpyk"]["log_level"],
        "debug"
    );

    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch("k", &conn);
    launcher.wait_ready(Duration::from_secs(60));
    let stderr = launcher.log();
    assert!(
        stderr.lines().all(|l| l.starts_with("[sshpyk k] ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("DEBUG"),
        "the stored level is used: {stderr}"
    );
    assert_one_private_log_file(&env, &info.key);

    let shown = env.sshpyk().args(["logs", "k"]).output().unwrap();
    assert!(shown.status.success());
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(shown.contains("ready: kernel pid"), "{shown}");
    env.sshpyk()
        .args(["logs", "k", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "pid {}",
            launcher.child.id()
        )))
        .stdout(predicate::str::contains("(running)"));

    // -f prints what comes next and ends once the launcher has.
    let followed = follow_while_the_launcher_ends(&env, &mut launcher);
    assert!(followed.contains("ready: kernel pid"), "{followed}");
    assert!(
        followed.contains("SIGTERM"),
        "lines logged while following: {followed}"
    );

    // Back to the default level: no debug lines in the next run.
    env.sshpyk()
        .args(["edit", "--kernel-name", "k", "--log-level", "info"])
        .assert()
        .success();
    assert!(env.read_kernel_json("k")["metadata"]["sshpyk"]
        .get("log_level")
        .is_none());
}

/// Kernel "k" has one run's file: 0600 in 0700 directories, under sshpyk's runtime dir, and
/// without the connection's `key`.
fn assert_one_private_log_file(env: &Env, key: &str) {
    let dir = env.path("rt/logs/k");
    assert_eq!(mode(&dir), 0o700);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!text.contains(key), "the key is never logged");
}

/// What `sshpyk logs k -f` prints while `launcher` is ended with SIGTERM; it must end by itself
/// after the launcher.
fn follow_while_the_launcher_ends(env: &Env, launcher: &mut Launcher) -> String {
    let mut std_follow = std::process::Command::new(env!("CARGO_BIN_EXE_sshpyk"));
    env.apply(&mut std_follow);
    let mut follow = std_follow
        .args(["logs", "k", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(eventually(Duration::from_secs(10), || follow
        .try_wait()
        .unwrap()
        .is_some()));
    let mut followed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    followed
}

#[test]
fn logs_of_a_kernel_that_never_ran_say_so() {
    let env = Env::local();
    env.sshpyk()
        .args(["logs", "nothing"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("no logs for kernel 'nothing'"));
}
