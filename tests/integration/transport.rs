//! One ssh session per kernel, however many clients: many kernels and clients on one host with
//! sshd's stock limits (10 sessions per connection), and a login shell that prints on stdout
//! cannot reach a stream.

use std::time::{Duration, Instant};

use crate::common::{assert_kept_state, ready_client, Env, Launcher};
use sshpyk::jupyter::connection::ConnectionInfo;
use sshpyk_testhost::TestUser;

const STEP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn twelve_kernels_with_two_clients_each_share_one_stock_host() {
    let env = Env::with_host();
    let kernel = env.add_kernel("k", &["--launch-timeout", "120"]);
    let started = Instant::now();
    let mut kernels: Vec<_> = (0..12)
        .map(|i| {
            let (conn, info) = env.connection_file(&format!("c{i}"));
            (env.launch(&kernel, &conn), info)
        })
        .collect();
    for (launcher, _) in &mut kernels {
        launcher.wait_ready(Duration::from_secs(150));
    }
    eprintln!("12 kernels ready in {:?}", started.elapsed());

    // A notebook and a console on each: both execute and see their own output.
    for (i, (launcher, info)) in kernels.iter().enumerate() {
        let mut notebook = ready_client(info).await;
        let mut console = ready_client(info).await;
        let r = notebook
            .execute(&format!("v = {i}; print('notebook', v)"), STEP)
            .await
            .unwrap();
        assert_eq!(r.stdout, format!("notebook {i}\n"), "{}", launcher.log());
        let r = console.execute("print('console', v)", STEP).await.unwrap();
        assert_eq!(r.stdout, format!("console {i}\n"), "{}", launcher.log());
        notebook.close();
        console.close();
    }

    // Nothing was started on the remote per client: a supervisor and a kernel per kernel.
    assert_eq!(env.remote_processes("sshpyk-supervisor").len(), 12);
    assert_eq!(env.remote_processes("ipykernel_launcher").len(), 12);
    // sshd allows 10 sessions per connection: some kernels went to another connection.
    assert!(
        kernels
            .iter()
            .any(|(l, _)| l.log().contains("refused one more session")),
        "no kernel needed another connection"
    );
    // However many connections the host got, one lock file for it.
    let locks = std::fs::read_dir(env.path("rt"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .count();
    assert_eq!(locks, 1);
    for (launcher, _) in &kernels {
        let log = launcher.log();
        assert!(
            log.matches("refused").count() <= 1,
            "a refusal logged more than once:\n{log}"
        );
    }
    for (launcher, _) in &mut kernels {
        launcher.signal(nix::sys::signal::Signal::SIGTERM);
    }
    for (launcher, _) in &mut kernels {
        assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());
    }
    assert!(env.remote_processes_end("ipykernel", Duration::from_secs(10)));
}

/// A host that `user` logs in to, and kernel "k" there with `x = 42` set: (env, launcher,
/// connection, the kernel's pid). `None`, said on stderr, without root (the test users need it).
async fn kernel_as(user: TestUser) -> Option<(Env, Launcher, ConnectionInfo, u32)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the {user:?} test user needs root");
        return None;
    }
    let env = Env::remote_host().user(user).build();
    let (launcher, info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    let mut c = ready_client(&info).await;
    let r = c.execute("x = 6 * 7; print(x)", STEP).await.unwrap();
    assert_eq!(r.stdout, "42\n");
    c.close();
    Some((env, launcher, info, pid))
}

#[tokio::test]
async fn a_login_shell_that_prints_cannot_reach_the_streams() {
    let Some((env, mut launcher, info, pid)) = kernel_as(TestUser::Chatty).await else {
        return;
    };
    // Reattaching goes through the login shell again.
    env.close_master();
    launcher.wait_for_log("reconnected after", Duration::from_secs(20));
    assert_kept_state(&info, pid).await;
    // The banners went to the log (stderr) or were skipped, never into a stream.
    assert!(launcher.child.try_wait().unwrap().is_none());
}

/// sshd hands every command to the login shell: with csh-family and fish shells (whose quoting
/// differs from sh's), `add`'s checks, `list`'s, the start and the re-attach all still work.
async fn a_kernel_runs_with_the_login_shell_of(user: TestUser) {
    let Some((env, mut launcher, info, pid)) = kernel_as(user).await else {
        return;
    };
    env.sshpyk()
        .args(["list", "-r"])
        .assert()
        .success()
        .stdout(predicates::str::contains("(v) remote kernel: 'python3'"));
    env.close_master();
    launcher.wait_for_log("reconnected after", Duration::from_secs(20));
    assert_kept_state(&info, pid).await;
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());
}

#[tokio::test]
async fn a_tcsh_login_shell_runs_a_kernel() {
    a_kernel_runs_with_the_login_shell_of(TestUser::Tcsh).await;
}

#[tokio::test]
async fn a_fish_login_shell_runs_a_kernel() {
    a_kernel_runs_with_the_login_shell_of(TestUser::Fish).await;
}

/// HPC login nodes often forbid forwarding: the streams ride the session, so nothing changes.
#[tokio::test]
async fn a_server_that_forbids_forwarding_still_carries_every_stream() {
    let env = Env::remote_host()
        .sshd_config("AllowTcpForwarding no\nAllowStreamLocalForwarding no\n")
        .build();
    let (mut launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    assert_eq!(c.execute("print(1 + 1)", STEP).await.unwrap().stdout, "2\n");
    assert!(c.heartbeat(STEP).await.unwrap());
    c.close();
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());
}
