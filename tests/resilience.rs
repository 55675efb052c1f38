//! Network drops: the launcher rides them out with the kernel's state intact, and the remote
//! guard reaps kernels whose launcher is gone for longer than the orphan timeout.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, port_is_free, ready_client, Env};

const STEP: Duration = Duration::from_secs(20);

/// A remote host in its own network namespace (the link can only be cut there).
fn env_with_link() -> Option<Env> {
    let env = Env::with_host();
    if env.host().netns().is_none() {
        eprintln!("skipped: cutting a link needs a network namespace (run as root)");
        return None;
    }
    Some(env)
}

#[tokio::test]
async fn a_twenty_second_link_cut_keeps_the_kernel_and_its_state() {
    let Some(env) = env_with_link() else { return };
    let (mut launcher, info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    let mut c = ready_client(&info).await;
    c.execute("x = 42", STEP).await.unwrap();
    c.close();

    env.host().link_down().unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        launcher.child.try_wait().unwrap().is_none(),
        "the launcher exited during the cut:\n{}",
        launcher.log()
    );
    env.host().link_up().unwrap();
    let back = Instant::now();

    let mut c = ready_client(&info).await;
    let r = c
        .execute("print(x, __import__('os').getpid())", STEP)
        .await
        .unwrap();
    let took = back.elapsed();
    assert_eq!(r.stdout, format!("42 {pid}\n"), "{}", launcher.log());
    assert!(launcher.child.try_wait().unwrap().is_none());
    let log = launcher.log();
    assert!(
        log.contains("connection lost, reconnecting (attempt 1)")
            && log.contains("reconnected after"),
        "{log}"
    );
    eprintln!("first execute {took:?} after the link returned");
}

#[tokio::test]
async fn a_cut_longer_than_the_orphan_timeout_reaps_the_kernel_and_ends_the_launcher() {
    let Some(env) = env_with_link() else { return };
    let (mut launcher, info) = env.start_kernel(&["--orphan-timeout", "4"]);

    env.host().link_down().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || env
            .remote_processes("ipykernel")
            .is_empty()),
        "the remote guard did not reap the kernel"
    );
    assert!(eventually(Duration::from_secs(5), || env
        .remote_run_dirs()
        .is_empty()));
    env.host().link_up().unwrap();
    let status = launcher
        .wait_timeout(Duration::from_secs(30))
        .expect("the launcher gives up");
    assert_eq!(status.code(), Some(8), "{}", launcher.log());
    assert!(launcher.log().contains("is gone"), "{}", launcher.log());
    for (_, port) in info.ports() {
        assert!(port_is_free(port));
    }
    assert!(env.remote_processes("sshpyk-supervisor").is_empty());
}

#[tokio::test]
async fn a_master_closed_mid_session_is_reopened() {
    let env = Env::with_host();
    let (mut launcher, info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    let mut c = ready_client(&info).await;
    c.execute("x = 42", STEP).await.unwrap();
    // The kernel process's own stderr reaches the launcher's, before and after a reconnection.
    let to_stderr = |marker: &str| format!("import os; os.write(2, b'{marker}\\n')");
    c.execute(&to_stderr("marker-before"), STEP).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || launcher
        .log()
        .contains("marker-before")));
    c.close();

    env.close_master();

    assert!(
        eventually(Duration::from_secs(10), || launcher
            .log()
            .contains("reconnected after")),
        "{}",
        launcher.log()
    );
    let mut c = ready_client(&info).await;
    let r = c
        .execute("print(x, __import__('os').getpid())", STEP)
        .await
        .unwrap();
    assert_eq!(r.stdout, format!("42 {pid}\n"));
    c.execute(&to_stderr("marker-after"), STEP).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || launcher
            .log()
            .contains("marker-after")),
        "{}",
        launcher.log()
    );
    assert!(launcher.child.try_wait().unwrap().is_none());
}

#[tokio::test]
async fn mounts_come_back_after_a_link_cut() {
    let Some(env) = env_with_link() else { return };
    let project = env.path("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("a.txt"), "before").unwrap();
    let remote = env.path("remote-mnt/project");
    let spec = format!("{}:{}", project.display(), remote.display());
    let (mut launcher, info) = env.start_kernel(&["--mount-local-on-remote", &spec]);
    let read = format!("print(open('{}/a.txt').read())", remote.display());
    let mut c = ready_client(&info).await;
    assert_eq!(c.execute(&read, STEP).await.unwrap().stdout, "before\n");
    c.close();

    env.host().link_down().unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    env.host().link_up().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || launcher
            .log()
            .matches("mounted ")
            .count()
            >= 2),
        "not mounted again:\n{}",
        launcher.log()
    );
    std::fs::write(project.join("a.txt"), "after").unwrap();
    let mut c = ready_client(&info).await;
    assert_eq!(
        c.execute(&read, STEP).await.unwrap().stdout,
        "after\n",
        "{}",
        launcher.log()
    );
    let mount_point = remote.to_string_lossy().to_string();
    let sshfs_for_it = || {
        env.remote_processes(&mount_point)
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sshfs")
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || sshfs_for_it() == 1),
        "{} sshfs for the mount point",
        sshfs_for_it()
    );
    assert!(launcher.child.try_wait().unwrap().is_none());
}
