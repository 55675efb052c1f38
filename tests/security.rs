//! The session key never shows: not in any process's argv (local or remote), not in the logs at
//! the highest verbosity, not in a file that others can read.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Env;
use nix::sys::signal::Signal;
use sshpyk::jupyter::KernelClient;

const STEP: Duration = Duration::from_secs(20);

/// Every process whose command line contains `secret`.
fn processes_showing(secret: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(secret))
        .collect()
}

/// Files under `dir` that contain `secret` and are readable by group or others.
fn exposed_files(dir: &Path, secret: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            exposed_files(&path, secret, found);
        } else if meta.is_file() {
            exposed_file(&path, secret, found);
        }
    }
}

/// `path`, if it contains `secret` and is readable by group or others.
fn exposed_file(path: &Path, secret: &str, found: &mut Vec<String>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let text = std::fs::read(path).unwrap_or_default();
    if String::from_utf8_lossy(&text).contains(secret) && meta.permissions().mode() & 0o077 != 0 {
        found.push(format!(
            "{} ({:o})",
            path.display(),
            meta.permissions().mode()
        ));
    }
}

#[tokio::test]
async fn the_session_key_never_appears_in_argv_logs_or_readable_files() {
    let env = Env::with_host();
    env.add_kernel("k", &[]);
    let (conn, info) = env.connection_file("a");
    let secret = info.key.clone();

    let log = env.path("launcher-vvv.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshpyk"));
    cmd.args(["-vvv", "launch", "--kernelspec"])
        .arg(env.kernel_dir("k"))
        .arg(&conn);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    env.apply(&mut cmd);
    let mut launcher = common::Launcher {
        child: cmd.spawn().unwrap(),
        log,
    };
    launcher.wait_ready(Duration::from_secs(60));

    let check = |when: &str| {
        assert_eq!(
            processes_showing(&secret),
            Vec::<String>::new(),
            "{when}: the key is in a command line"
        );
        let mut found = Vec::new();
        exposed_files(env.dir.path(), &secret, &mut found);
        // Stray temp files would land at the top of /tmp; its subtrees belong to other processes.
        for entry in std::fs::read_dir("/tmp").unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path());
            if meta.is_ok_and(|m| m.is_file()) {
                exposed_file(&entry.path(), &secret, &mut found);
            }
        }
        assert_eq!(
            found,
            Vec::<String>::new(),
            "{when}: the key is in a file others can read"
        );
    };
    check("running");
    let mut c = KernelClient::connect(&info, STEP).await.unwrap();
    c.wait_for_ready(STEP).await.unwrap();
    assert_eq!(c.execute("print(1)", STEP).await.unwrap().stdout, "1\n");
    launcher.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    check("after an interrupt");
    launcher.signal(Signal::SIGTERM);
    // The kernel is ended by SIGTERM: its status is the launcher's.
    assert_eq!(
        launcher.wait_timeout(STEP).expect("exits").code(),
        Some(143),
        "{}",
        launcher.log()
    );
    check("after shutdown");
    let log = launcher.log();
    assert!(
        log.contains("DEBUG") || log.contains("TRACE"),
        "expected verbose logs:\n{log}"
    );
    assert!(
        log.contains("debug1:"),
        "ssh's own debug output is on at -vvv:\n{log}"
    );
    assert!(!log.contains(&secret), "the key is in the -vvv log");
}
