//! `ProxyJump` end to end: the remote host sits in a network namespace linked only to a
//! bastion's (each with its own sshd), so every byte goes through the bastion.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{ready_client, Env};

const STEP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_kernel_behind_a_bastion_starts_runs_and_ends_through_proxyjump() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: hosts in network namespaces need root");
        return;
    }
    let env = Env::remote_host().behind_bastion().build();
    // This machine cannot reach the host itself.
    let direct = Command::new("ssh")
        .arg("-F")
        .arg(env.ssh_config())
        .args(["-o", "ProxyJump=none", "remote", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!direct.status.success());

    let (mut launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    let r = c
        .execute("import os; print(os.readlink('/proc/self/ns/net'))", STEP)
        .await
        .unwrap();
    let theirs = env
        .host()
        .remote_command("readlink", ["/proc/self/ns/net"])
        .output()
        .unwrap();
    assert_eq!(
        r.stdout.trim(),
        String::from_utf8_lossy(&theirs.stdout).trim()
    );
    // The bastion holds the TCP connection to the host.
    let bastion = env.bastion.as_ref().unwrap();
    let target = format!("{}:22", env.host().address());
    let held = bastion
        .remote_command("ss", ["-Htn", "state", "established", "dst", &target])
        .output()
        .unwrap();
    assert!(
        !held.stdout.is_empty(),
        "the bastion holds no connection to the host"
    );
    c.close();

    // Jupyter's SIGKILL: the kernel ends at once through the bastion too.
    let pid = launcher.remote_pid();
    launcher.child.kill().unwrap();
    launcher.child.wait().unwrap();
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(5)),
        "kernel {pid} still runs"
    );
}
