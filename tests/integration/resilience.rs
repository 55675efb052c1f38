//! Network drops: the launcher rides them out with the kernel's state intact, and the remote
//! guard reaps kernels whose launcher is gone for longer than the orphan timeout.

use std::time::{Duration, Instant};

use crate::common::{assert_kept_state, eventually, port_is_free, ready_client, Env};
use nix::sys::signal::Signal;

const STEP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_twenty_second_link_cut_keeps_the_kernel_and_its_state() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
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
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (mut launcher, info) = env.start_kernel(&["--orphan-timeout", "4"]);

    env.host().link_down().unwrap();
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(30)),
        "the remote guard did not reap the kernel"
    );
    assert!(eventually(Duration::from_secs(5), || env
        .remote_run_dirs()
        .is_empty()));
    env.host().link_up().unwrap();
    launcher.assert_gives_up_on_a_gone_kernel();
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

    launcher.wait_for_log("reconnected after", Duration::from_secs(10));
    assert_kept_state(&info, pid).await;
    let mut c = ready_client(&info).await;
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
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let project = env.path("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("a.txt"), "before").unwrap();
    let remote = env.path("remote-mnt/project");
    // The lazy (sshfs) mount is mounted again; a synced copy catches up (local_on_remote_sync).
    let spec = format!("{}:{}:lazy", project.display(), remote.display());
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

/// Executes `code` with fresh clients until one answers (a client opened while the launcher was
/// still switching connections may be cut once); returns the output.
async fn first_answer(info: &sshpyk::jupyter::connection::ConnectionInfo, code: &str) -> String {
    let end = Instant::now() + STEP;
    loop {
        let step = Duration::from_secs(2);
        let answer = async {
            let mut c = sshpyk::jupyter::KernelClient::connect(info, step).await?;
            c.wait_for_ready(step).await?;
            let out = c.execute(code, step).await?.stdout;
            c.close();
            Ok::<_, sshpyk::error::Error>(out)
        };
        match answer.await {
            Ok(out) => return out,
            Err(e) if Instant::now() < end => eprintln!("not yet: {e}"),
            Err(e) => panic!("no answer within {STEP:?}: {e}"),
        }
    }
}

/// A common config keeps connections through drops (`ServerAliveCountMax 60000`): such an old
/// TCP connection resumes only when its retransmission backoff next fires, seconds after the
/// link is back. The launcher races a fresh connection against it instead.
#[tokio::test]
async fn after_a_cut_the_kernel_answers_within_three_seconds_whatever_the_keepalive_settings() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let config = env.ssh_config();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "    ServerAliveInterval 10\n    ServerAliveCountMax 60000\n    ControlMaster auto\n    \
         ControlPath \"{}/user-cm-%C\"\n    ControlPersist 600\n",
        env.path("home").display()
    ));
    std::fs::write(&config, text).unwrap();
    // The user's own master, opened by hand with those settings; the launcher rides it.
    let opened = std::process::Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-N", "-f", "remote"])
        .status()
        .unwrap();
    assert!(opened.success());
    let (mut launcher, info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    assert_eq!(first_answer(&info, "x = 42").await, "");

    env.host().link_down().unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    env.host().link_up().unwrap();
    let back = Instant::now();
    let out = first_answer(&info, "print(x, __import__('os').getpid())").await;
    let took = back.elapsed();
    eprintln!("first answer {took:?} after the link returned");
    assert_eq!(out, format!("42 {pid}\n"), "{}", launcher.log());
    assert!(
        took <= Duration::from_secs(3),
        "first answer {took:?} after the link returned:\n{}",
        launcher.log()
    );
    assert!(launcher.child.try_wait().unwrap().is_none());
    let _ = std::process::Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-O", "exit", "remote"])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The kernel keeps printing large lines to its own stdout through an outage: the supervisor
/// must stay responsive (it used to block writing one while holding its send lock), so the
/// returning launcher is answered and the kernel kept.
#[tokio::test]
async fn a_kernel_printing_through_an_outage_is_reattached() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (mut launcher, info) = env.start_kernel(&["--orphan-timeout", "30"]);
    let pid = launcher.remote_pid();
    // ipykernel captures fd 1 for its clients; its copy of the original is the process's stdout.
    let flood = "import os, sys, threading, time\n\
x = 42\n\
fd = sys.stdout._original_stdstream_copy\n\
def flood():\n    while True:\n        os.write(fd, b'y' * 18000 + b'\\n'); time.sleep(0.001)\n\
threading.Thread(target=flood, daemon=True).start()\n";
    assert_eq!(first_answer(&info, flood).await, "");
    env.host().link_down().unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    env.host().link_up().unwrap();
    let out = first_answer(&info, "print(x, __import__('os').getpid())").await;
    assert_eq!(out, format!("42 {pid}\n"), "{}", tail(&launcher.log()));
    assert!(launcher.child.try_wait().unwrap().is_none());
}

fn tail(log: &str) -> String {
    log.lines()
        .filter(|l| !l.starts_with("yyyy"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cell that prints a line a second for 12 s.
const TWELVE_LINES: &str =
    "import time\nfor i in range(12):\n    print(i, flush=True)\n    time.sleep(1)";

fn twelve_lines() -> String {
    (0..12).map(|i| format!("{i}\n")).collect()
}

/// Cuts the link 2 s from now for `secs` seconds.
async fn cut_soon(env: &Env, secs: u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.host().link_down().unwrap();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    env.host().link_up().unwrap();
}

/// Streams resume across the reconnection: the running cell's output printed during the cut
/// and its reply reach the same client connection (no `[*]` forever in JupyterLab).
#[tokio::test]
async fn a_cell_printing_through_a_cut_ends_with_all_its_output_in_order() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    let (r, ()) = tokio::join!(
        c.execute(TWELVE_LINES, Duration::from_secs(90)),
        cut_soon(&env, 20)
    );
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", launcher.log()));
    assert_eq!((r.status.as_str(), r.stdout), ("ok", twelve_lines()));
    assert!(
        launcher.log().contains("every stream resumed"),
        "{}",
        launcher.log()
    );
}

/// Shift+Enter on a train: a request written to the local port while the link is down runs
/// once the link is back, on the same client connection, and is answered. A request sent the
/// moment the link returns is answered within 1 s of the reattach.
#[tokio::test]
async fn requests_sent_during_a_cut_and_at_its_end_are_answered() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    c.execute("x = 42", STEP).await.unwrap();
    let mut late = ready_client(&info).await;
    env.host().link_down().unwrap();
    // Past the launcher's silence threshold: it knows the link is down.
    launcher.wait_for_log("racing a new connection", Duration::from_secs(10));
    // `sshpyk ps` shows the kernel waiting, and since when.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ps = env.sshpyk().arg("ps").output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        regex::Regex::new(r"reconnecting \(link down for [0-9]+s\)")
            .unwrap()
            .is_match(&ps),
        "{ps}"
    );
    let during = async {
        c.execute("print(x + 1)", Duration::from_secs(60))
            .await
            .unwrap()
    };
    let up_then_ask = async {
        tokio::time::sleep(Duration::from_secs(15)).await;
        env.host().link_up().unwrap();
        let reply = late.execute("print(x + 2)", Duration::from_secs(30)).await;
        (Instant::now(), reply.unwrap())
    };
    let reattached = async {
        while !launcher.log().contains("every stream resumed") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Instant::now()
    };
    let (during, (answered, late_reply), reattached) =
        tokio::join!(during, up_then_ask, reattached);
    assert_eq!(during.stdout, "43\n", "{}", launcher.log());
    assert_eq!(late_reply.stdout, "44\n");
    let after = answered.saturating_duration_since(reattached);
    eprintln!("the request sent at link-up was answered {after:?} after the reattach");
    assert!(
        after <= Duration::from_secs(1),
        "{after:?}\n{}",
        launcher.log()
    );
}

/// Past the outage bound the supervisor closes the stream that holds the most (here iopub),
/// says so, and keeps the kernel; the launcher's memory stays bounded.
#[tokio::test]
async fn output_past_the_outage_bound_closes_one_stream_and_keeps_the_kernel() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (launcher, info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    let mut c = ready_client(&info).await;
    // 100 MB of output, starting once the link is down.
    let flood = "import threading, time\nx = 42\n\
def flood():\n    time.sleep(4)\n    for _ in range(100):\n        print('y' * 1_000_000, flush=True)\n\
threading.Thread(target=flood, daemon=True).start()";
    c.execute(flood, STEP).await.unwrap();
    env.host().link_down().unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    env.host().link_up().unwrap();
    launcher.wait_for_log("every stream resumed", Duration::from_secs(20));
    assert_kept_state(&info, pid).await;
    let log = launcher.log();
    assert!(
        log.contains("on its iopub channel than the remote keeps (64 MiB per kernel)"),
        "{log}"
    );
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", launcher.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("launcher RSS {} MiB", rss_kib >> 10);
    assert!(rss_kib < 100 << 10, "launcher RSS {rss_kib} KiB");
    drop(c);
}

/// A closed laptop: the launcher and its ssh processes frozen while the link is down for longer
/// than any of the launcher's own timers, then woken with the network back. The kernel is the
/// same, and the cell that was running completes in its client with all its output.
#[tokio::test]
async fn a_frozen_laptop_wakes_to_the_same_kernel_and_the_cells_whole_output() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (launcher, info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    let mut c = ready_client(&info).await;
    c.execute("x = 42", STEP).await.unwrap();
    let config = env.ssh_config().to_string_lossy().into_owned();
    let sleep_and_wake = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut frozen = env.local_processes(&config);
        assert!(!frozen.is_empty(), "no ssh process of the launcher's found");
        frozen.push(launcher.pid() as u32);
        signal_all(&frozen, Signal::SIGSTOP);
        env.host().link_down().unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        env.host().link_up().unwrap();
        signal_all(&frozen, Signal::SIGCONT);
    };
    let (r, ()) = tokio::join!(
        c.execute(TWELVE_LINES, Duration::from_secs(120)),
        sleep_and_wake
    );
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", launcher.log()));
    assert_eq!((r.status.as_str(), r.stdout), ("ok", twelve_lines()));
    assert_kept_state(&info, pid).await;
}

fn signal_all(pids: &[u32], signal: Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), signal);
    }
}

/// Jupyter's shutdown while the link is down: the launcher exits within Jupyter's budget and
/// says what happens next; the kernel ends after the orphan timeout, as README says.
#[tokio::test]
async fn a_shutdown_during_a_cut_exits_at_once_and_the_kernel_ends_after_the_orphan_timeout() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (mut launcher, _info) = env.start_kernel(&["--orphan-timeout", "8"]);
    env.host().link_down().unwrap();
    launcher.wait_for_log("racing a new connection", Duration::from_secs(10));
    launcher.signal(Signal::SIGTERM);
    let status = launcher
        .wait_timeout(Duration::from_millis(2500))
        .expect("the launcher exits within Jupyter's 2.5 s");
    assert_ne!(status.code(), Some(0));
    assert!(
        launcher
            .log()
            .contains("while the connection to 'remote' was down; the remote guard ends kernel"),
        "{}",
        launcher.log()
    );
    assert!(!env.remote_processes("ipykernel").is_empty());
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(30)),
        "the remote guard did not end the kernel"
    );
    env.host().link_up().unwrap();
}
