//! `sshpyk connect` end to end: a test sshd that takes only a password, the prompt answered
//! through a pseudo-terminal, then kernels that start without any prompt over that connection.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{eventually, on_terminal, pty, ready_client, Env};
use sshpyk_testhost::{password_user_password, TestUser, PASSWORD_USER};

const STEP: Duration = Duration::from_secs(20);

/// Runs `sshpyk connect ...` on a terminal of its own, typing one of `passwords` at each
/// prompt; returns its exit code and what the terminal showed.
fn connect_on_a_terminal(env: &Env, args: &[&str], passwords: &[&str]) -> (Option<i32>, String) {
    let (controller, terminal) = pty(None);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshpyk"));
    env.apply(&mut cmd);
    cmd.arg("connect").args(args);
    // A session of its own whose controlling terminal is the pty: ssh reads /dev/tty.
    on_terminal(&mut cmd, &terminal);
    let mut child = cmd.spawn().unwrap();
    drop(terminal);
    let _group = KillGroupOnDrop(child.id() as i32);
    drop(cmd);
    let shown = Arc::new(Mutex::new(String::new()));
    let mut reader = std::fs::File::from(controller.try_clone().unwrap());
    let sink = shown.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once nothing holds the terminal any more.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut writer = std::fs::File::from(controller);
    for (n, password) in passwords.iter().enumerate() {
        let prompted = eventually(STEP, || {
            shown.lock().unwrap().matches("password:").count() > n
        });
        assert!(prompted, "no password prompt: {}", shown.lock().unwrap());
        writer
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
    }
    let mut status = None;
    assert!(
        eventually(STEP, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "connect did not return: {}",
        shown.lock().unwrap()
    );
    drop(writer);
    let text = shown.lock().unwrap().clone();
    (status.unwrap().code(), text)
}

/// Ends a process group left behind by a failed check (ssh waiting at a prompt); nothing is
/// left in it once `connect` returned (the master ssh daemonized into a session of its own).
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The exit code of `sshpyk connect ARGS --check`: 0 with a connection open, 4 without.
fn check(env: &Env, args: &[&str]) -> Option<i32> {
    let out = env
        .sshpyk()
        .arg("connect")
        .args(args)
        .arg("--check")
        .output()
        .unwrap();
    out.status.code()
}

/// Without a connection, kernel "k" is added with a warning, its launch fails in one line, and
/// `list` says the same; each names `hint`, the command to run.
fn assert_each_names_connect(env: &Env, hint: &str) {
    let added = env
        .add_command("python3", &["--kernel-name", "k"])
        .output()
        .unwrap();
    assert!(added.status.success());
    assert!(String::from_utf8_lossy(&added.stderr).contains(hint));
    let (code, log) = env.failed_launch("k");
    assert_eq!(code, Some(4), "{log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("sshpyk: error: authentication to 'remote'") && last.contains(hint),
        "{log}"
    );
    let list = env.sshpyk().args(["list", "-r"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("(x) connection: authentication") && listed.contains(hint),
        "{listed}"
    );
}

#[tokio::test]
async fn a_password_typed_once_in_connect_lets_kernels_start_without_a_prompt() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the password test user needs root");
        return;
    }
    let env = Env::remote_host()
        .user(TestUser::Password)
        .sshd_config("PubkeyAuthentication no\nPasswordAuthentication yes\n")
        .build();
    let config = env.ssh_config();
    let config = config.to_str().unwrap();
    let host = ["remote", "--ssh-config", config];
    assert_each_names_connect(&env, &format!("sshpyk connect {}", host.join(" ")));
    assert_eq!(check(&env, &host), Some(4));

    // A wrong password: ssh says so on the terminal, and connect fails.
    let (code, shown) = connect_on_a_terminal(&env, &host, &["wrong"; 3]);
    assert_ne!(code, Some(0), "{shown}");
    // The right one, through the kernelspec's settings this time.
    let (code, shown) =
        connect_on_a_terminal(&env, &["--kernel-name", "k"], &[password_user_password()]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("'remote': connected;"), "{shown}");
    assert_eq!(check(&env, &host), Some(0));

    // The kernel starts without any prompt (no terminal at all) over that connection.
    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch("k", &conn);
    launcher.wait_ready(Duration::from_secs(60));
    let mut c = ready_client(&info).await;
    let r = c
        .execute("import getpass; print(getpass.getuser())", STEP)
        .await
        .unwrap();
    assert_eq!(r.stdout, format!("{PASSWORD_USER}\n"));
    c.close();
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());

    // --exit closes it; then nothing is open.
    let closed = env
        .sshpyk()
        .arg("connect")
        .args(host)
        .arg("--exit")
        .output()
        .unwrap();
    assert!(closed.status.success());
    assert!(String::from_utf8_lossy(&closed.stdout).contains("connection closed"));
    assert_eq!(check(&env, &["--kernel-name", "k"]), Some(4));
}
