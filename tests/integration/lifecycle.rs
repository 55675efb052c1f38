//! How remote kernels end, as Jupyter ends them: with their launcher (SIGKILL over a healthy
//! connection), within Jupyter's budget on SIGTERM whatever the kernel ignores, with the process
//! that started them; and whatever a kernel started ends with it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{eventually, ready_client, venv_python, Env};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const STEP: Duration = Duration::from_secs(20);
/// The bound the launcher promises is 2 s; the tests allow for a loaded 2-CPU machine and
/// print what they measured.
const PROMISED: Duration = Duration::from_secs(2);
const ALLOWED: Duration = Duration::from_secs(4);

/// Leaves three processes behind: a child in the kernel's process group, a child in a session
/// of its own, and a double-forked daemon (reparented away from the kernel). Prints their tag.
const SPAWN_DESCENDANTS: &str = r#"
import os, subprocess, sys
tag = "sshpyk-descendant-%d" % os.getpid()
sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
subprocess.Popen(sleep + [tag + "-group"])
subprocess.Popen(sleep + [tag + "-session"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, sleep + [tag + "-daemon"])
    os._exit(0)
os.wait()
print(tag)
"#;

/// Makes the kernel deaf to SIGINT and SIGTERM and busy for good.
const STUCK: &str = "import signal, time\n\
signal.signal(signal.SIGINT, signal.SIG_IGN)\n\
signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
while True:\n    time.sleep(0.01)\n";

/// Starts descendants through the kernel; returns their tag once all three run.
async fn spawn_descendants(
    env: &Env,
    info: &sshpyk::jupyter::connection::ConnectionInfo,
) -> String {
    let mut c = ready_client(info).await;
    let tag = c
        .execute(SPAWN_DESCENDANTS, STEP)
        .await
        .unwrap()
        .stdout
        .trim()
        .to_string();
    c.close();
    assert!(tag.starts_with("sshpyk-descendant-"), "{tag}");
    assert!(
        eventually(Duration::from_secs(10), || env.remote_processes(&tag).len()
            == 3),
        "descendants: {:?}",
        env.remote_processes(&tag)
    );
    tag
}

/// How long until the remote kernel `pid` and every process tagged `tag` are gone.
fn time_until_gone(env: &Env, pid: u32, tag: &str, since: Instant) -> Option<Duration> {
    let gone = eventually(ALLOWED, || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && env.remote_processes(tag).is_empty()
    });
    gone.then(|| since.elapsed())
}

#[tokio::test]
async fn a_killed_launcher_ends_the_remote_kernel_and_all_it_started() {
    let env = Env::with_host();
    // A long orphan timeout: only the launcher's death may end the kernel here.
    let (mut launcher, info) = env.start_kernel(&["--orphan-timeout", "300"]);
    let pid = launcher.remote_pid();
    let tag = spawn_descendants(&env, &info).await;

    // `shutdown_kernel(now=True)`: SIGINT, then SIGKILL to the launcher's process group.
    let group = Pid::from_raw(launcher.pid());
    killpg(group, Signal::SIGINT).unwrap();
    killpg(group, Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    launcher
        .wait_timeout(Duration::from_secs(5))
        .expect("killed");
    let took = time_until_gone(&env, pid, &tag, killed);
    eprintln!("remote kernel and descendants gone {took:?} after SIGKILL (promised: {PROMISED:?})");
    assert!(
        took.is_some(),
        "left running: kernel {pid} alive: {}, descendants {:?}",
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        env.remote_processes(&tag)
    );
    assert!(eventually(Duration::from_secs(5), || env
        .remote_run_dirs()
        .is_empty()));
}

#[tokio::test]
async fn sigterm_ends_a_kernel_that_ignores_signals_within_jupyters_budget() {
    let env = Env::with_host();
    let (mut launcher, info) = env.start_kernel(&["--shutdown-timeout", "30"]);
    let pid = launcher.remote_pid();
    let tag = spawn_descendants(&env, &info).await;
    let mut c = ready_client(&info).await;
    // Sent, never answered: the kernel is stuck from now on.
    let _ = c.execute(STUCK, Duration::from_millis(500)).await;
    c.close();

    let signalled = Instant::now();
    launcher.signal(Signal::SIGTERM);
    let status = launcher
        .wait_timeout(ALLOWED)
        .unwrap_or_else(|| panic!("launcher still running after SIGTERM:\n{}", launcher.log()));
    let exited = signalled.elapsed();
    let took = time_until_gone(&env, pid, &tag, signalled);
    eprintln!(
        "after SIGTERM: launcher exited in {exited:?}, remote kernel and descendants gone in {took:?} (promised: {PROMISED:?})"
    );
    assert!(took.is_some(), "{:?}", env.remote_processes(&tag));
    // The kernel ignored SIGTERM: SIGKILL ended it.
    assert_eq!(status.code(), Some(137), "{}", launcher.log());
}

#[tokio::test]
async fn the_launcher_follows_the_process_that_started_it() {
    let env = Env::with_host();
    env.add_kernel("k", &["--shutdown-timeout", "5"]);
    let (conn, info) = env.connection_file("a");
    // A stand-in for jupyter_client's process, named in JPY_PARENT_PID as it does.
    let mut parent = Command::new("sleep").arg("600").spawn().unwrap();
    let mut launcher =
        env.launch_with_env("k", &conn, &[("JPY_PARENT_PID", &parent.id().to_string())]);
    launcher.wait_ready(Duration::from_secs(60));
    let pid = launcher.remote_pid();
    ready_client(&info).await.close();

    parent.kill().unwrap();
    parent.wait().unwrap();
    let died = Instant::now();
    let status = launcher
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("launcher outlived its parent:\n{}", launcher.log()));
    eprintln!(
        "launcher stopped {:?} after its parent died",
        died.elapsed()
    );
    assert!(status.success(), "{status}: {}", launcher.log());
    assert!(
        launcher.log().contains("is gone: shutting down"),
        "{}",
        launcher.log()
    );
    assert!(eventually(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
}

/// jupyter_client itself: a stuck kernel's "Restart" (shutdown_request unanswered, SIGTERM at
/// 2.5 s, SIGKILL at 5 s) leaves no old kernel beside the new one; a client that dies without
/// shutting its kernel down takes it along; an independent kernel stays.
#[test]
fn jupyter_client_restart_of_a_stuck_kernel_and_a_dead_client() {
    let env = Env::with_host();
    env.add_kernel("ssh_remote", &["--orphan-timeout", "300"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/lifecycle_edges.py"
    );
    let run = |scenario: &str| {
        let mut cmd = Command::new(venv_python());
        cmd.arg(script).arg(scenario).arg("ssh_remote");
        env.apply(&mut cmd);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{scenario}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let out = run("stuck-restart");
    let old_pid: u32 = value_of(&out, "old-kernel-pid");
    assert!(
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists(),
        "the stuck kernel {old_pid} survived the restart: {out}"
    );
    assert!(env.remote_processes("ipykernel").is_empty(), "{out}");

    for (scenario, stays) in [("dead-client", false), ("independent", true)] {
        let out = run(scenario);
        let launcher: i32 = value_of(&out, "launcher-pid");
        let alive = || nix::sys::signal::kill(Pid::from_raw(launcher), None).is_ok();
        if stays {
            std::thread::sleep(Duration::from_secs(3));
            assert!(alive(), "an independent kernel's launcher exited: {out}");
            nix::sys::signal::kill(Pid::from_raw(launcher), Signal::SIGKILL).unwrap();
        } else {
            assert!(
                eventually(Duration::from_secs(15), || !alive()),
                "launcher {launcher} outlived the client that started it"
            );
        }
        assert!(
            env.remote_processes_end("ipykernel", Duration::from_secs(10)),
            "{scenario}: a remote kernel was left behind"
        );
    }
}

fn value_of<T: std::str::FromStr>(out: &str, key: &str) -> T {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in: {out}"))
}

/// The lease is renewed from a task of its own: a message-mode interrupt that waits (here on a
/// kernel frozen with SIGSTOP) for longer than the orphan timeout does not get the kernel reaped.
#[tokio::test]
async fn a_long_interrupt_does_not_let_the_lease_lapse() {
    let env = Env::with_host();
    let spec_dir = env.path("remote-data/kernels/msgmode");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let spec = serde_json::json!({
        "argv": [venv_python(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Message mode", "language": "python", "interrupt_mode": "message",
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string()).unwrap();
    env.add_command("msgmode", &["--kernel-name", "m", "--orphan-timeout", "2"])
        .assert()
        .success();
    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch("m", &conn);
    launcher.wait_ready(Duration::from_secs(60));
    let pid = launcher.remote_pid();
    ready_client(&info).await.close();

    let kernel = Pid::from_raw(pid as i32);
    nix::sys::signal::kill(kernel, Signal::SIGSTOP).unwrap();
    launcher.signal(Signal::SIGINT);
    // The interrupt waits 5 s for the frozen kernel: more than the 2 s orphan timeout.
    tokio::time::sleep(Duration::from_secs(7)).await;
    nix::sys::signal::kill(kernel, Signal::SIGCONT).unwrap();
    assert!(
        launcher.child.try_wait().unwrap().is_none(),
        "the kernel was reaped during the interrupt:\n{}",
        launcher.log()
    );
    let mut c = ready_client(&info).await;
    let r = c
        .execute("print(__import__('os').getpid())", STEP)
        .await
        .unwrap();
    assert_eq!(r.stdout, format!("{pid}\n"), "{}", launcher.log());
}

/// What a kernel prints on its way out (a traceback, last words) reaches the launcher's log
/// before the launcher exits with the kernel's status.
#[tokio::test]
async fn a_kernels_last_words_reach_the_log() {
    let env = Env::with_host();
    let (mut launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    // ipykernel captures fd 1 for its clients; its copy of the original is the process's stdout.
    let last_words = "import os, sys\n\
fd = sys.stdout._original_stdstream_copy\n\
os.write(fd, b'sshpyk-last-words 1\\n' + b'x' * 100000 + b'\\nsshpyk-last-words 2\\n')\n\
os._exit(3)\n";
    let _ = c.execute(last_words, Duration::from_secs(2)).await;
    let status = launcher
        .wait_timeout(Duration::from_secs(10))
        .expect("the launcher exits with its kernel");
    assert_eq!(status.code(), Some(3));
    let log = launcher.log();
    assert!(
        log.contains("sshpyk-last-words 1") && log.contains("sshpyk-last-words 2"),
        "{}",
        log.lines()
            .filter(|l| !l.starts_with("xxxx"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
