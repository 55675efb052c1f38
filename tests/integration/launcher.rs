//! The launcher end to end: a real sshd "remote host", a real ipykernel, our own zmq client.

use std::time::{Duration, Instant};

use crate::common::{self, eventually, interrupt_busy_kernel, port_is_free, ready_client, Env};
use nix::sys::signal::Signal;

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn runs_code_on_the_remote_keeps_state_and_shuts_down_cleanly() {
    let env = Env::with_host();
    let (mut launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;

    let r = c.execute("x = 6 * 7\nprint(x)", STEP).await.unwrap();
    assert_eq!((r.status.as_str(), r.stdout.as_str()), ("ok", "42\n"));
    assert_eq!(
        c.execute("x", STEP).await.unwrap().result.as_deref(),
        Some("42")
    );

    // The kernel runs in the remote host's network namespace, not ours.
    let r = c
        .execute("import os; print(os.readlink('/proc/self/ns/net'))", STEP)
        .await
        .unwrap();
    let theirs = r.stdout.trim().to_string();
    let remote_ns = env
        .host()
        .remote_command("readlink", ["/proc/self/ns/net"])
        .output()
        .unwrap();
    assert_eq!(theirs, String::from_utf8_lossy(&remote_ns.stdout).trim());
    if env.host().netns().is_some() {
        assert_ne!(
            theirs,
            std::fs::read_link("/proc/self/ns/net")
                .unwrap()
                .to_string_lossy()
        );
    }
    assert_eq!(
        c.execute("import os; print(os.getpid())", STEP)
            .await
            .unwrap()
            .stdout
            .trim(),
        launcher.remote_pid().to_string()
    );

    // The kernel's connection file on the remote is private.
    let r = c.execute("import os, json, stat; from ipykernel.connect import get_connection_file as g; f = g(); print(json.load(open(f))['transport'], oct(os.stat(f).st_mode & 0o777), oct(os.stat(os.path.dirname(f)).st_mode & 0o777))", STEP).await.unwrap();
    assert_eq!(r.stdout.trim(), "ipc 0o600 0o700");

    c.shutdown(false, STEP).await.unwrap();
    let started = Instant::now();
    let status = launcher
        .wait_timeout(Duration::from_secs(10))
        .expect("launcher exits after shutdown");
    assert!(status.success(), "{status}: {}", launcher.log());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "launcher took {:?} to exit",
        started.elapsed()
    );
    for (_, port) in info.ports() {
        assert!(port_is_free(port), "port {port} still bound");
    }
    assert!(
        env.remote_processes("ipykernel").is_empty(),
        "remote kernel left behind"
    );
    assert!(
        env.remote_processes_end("sshpyk-relay", Duration::from_secs(2)),
        "a relay to the kernel's sockets was left behind"
    );
    // The supervisor reports the exit just before its own interpreter ends.
    assert!(
        env.remote_processes_end("sshpyk-supervisor", Duration::from_secs(2)),
        "remote supervisor left behind"
    );
    assert!(
        env.remote_run_dirs().is_empty(),
        "remote files left: {:?}",
        env.remote_run_dirs()
    );
}

#[tokio::test]
async fn sigint_interrupts_the_remote_kernel() {
    let env = Env::with_host();
    let (mut launcher, info) = env.start_kernel(&[]);
    let c = ready_client(&info).await;
    let mut other = ready_client(&info).await;
    let started = Instant::now();
    let r = interrupt_busy_kernel(c, &launcher).await;
    assert_eq!(r.status, "error");
    // The second of sleep before the signal included.
    assert!(started.elapsed() < Duration::from_secs(16));
    // Still alive and usable.
    assert_eq!(
        other.execute("print(1 + 1)", STEP).await.unwrap().stdout,
        "2\n"
    );
    assert!(
        launcher.child.try_wait().unwrap().is_none(),
        "launcher must survive an interrupt"
    );
}

#[tokio::test]
async fn restart_on_the_same_ports_after_sigterm_and_after_sigkill() {
    let env = Env::with_host();
    let kernel = env.add_kernel("k", &["--orphan-timeout", "2"]);
    let (conn, info) = env.connection_file("a");

    // SIGTERM (Jupyter already sent shutdown_request): the kernel and the launcher end within
    // Jupyter's budget, everything removed.
    let mut first = env.launch(&kernel, &conn);
    first.wait_ready(START);
    let mut c = ready_client(&info).await;
    c.execute("x = 1", STEP).await.unwrap();
    c.close();
    let signalled = Instant::now();
    first.signal(Signal::SIGTERM);
    let status = first
        .wait_timeout(Duration::from_secs(15))
        .expect("launcher exits on SIGTERM");
    eprintln!("launcher exited {:?} after SIGTERM", signalled.elapsed());
    // The kernel's own status: ended by SIGTERM.
    assert_eq!(status.code(), Some(143), "{}", first.log());
    assert!(env.remote_processes_end("ipykernel", Duration::from_secs(5)));

    // Same ports again at once; the new kernel is fresh.
    let mut second = env.launch(&kernel, &conn);
    second.wait_ready(START);
    let mut c = ready_client(&info).await;
    let r = c.execute("print('x' in dir())", STEP).await.unwrap();
    assert_eq!(r.stdout, "False\n");
    let remote_pid = second.remote_pid();
    c.close();

    // SIGKILL over a healthy connection: nothing of ours survives locally, the ports are free
    // at once, and the supervisor sees its channel closed while the connection lives on: the
    // launcher is gone, so the kernel ends at once (not after the orphan timeout).
    second.signal(Signal::SIGKILL);
    second.wait_timeout(Duration::from_secs(5)).expect("killed");
    for (_, port) in info.ports() {
        assert!(
            eventually(Duration::from_secs(2), || port_is_free(port)),
            "port {port} still bound after SIGKILL"
        );
    }
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(15)),
        "remote kernel {remote_pid} not ended after its launcher was killed"
    );
    assert!(eventually(Duration::from_secs(5), || env
        .remote_run_dirs()
        .is_empty()));

    let mut third = env.launch(&kernel, &conn);
    third.wait_ready(START);
    let mut c = ready_client(&info).await;
    assert_eq!(c.execute("print(3)", STEP).await.unwrap().stdout, "3\n");
}

#[tokio::test]
async fn launcher_exits_at_once_when_the_remote_kernel_is_killed() {
    let env = Env::with_host();
    let (mut launcher, _info) = env.start_kernel(&[]);
    let pid = launcher.remote_pid();
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let status = launcher
        .wait_timeout(Duration::from_secs(5))
        .expect("launcher exits");
    let took = killed.elapsed();
    assert_eq!(status.code(), Some(137), "{}", launcher.log());
    assert!(took < Duration::from_secs(1), "launcher took {took:?}");
    assert!(
        launcher.log().contains("was killed by signal 9"),
        "{}",
        launcher.log()
    );
    assert!(eventually(Duration::from_secs(2), || env
        .remote_run_dirs()
        .is_empty()));
}

#[tokio::test]
async fn a_host_that_never_answers_is_bounded_by_the_launch_timeout() {
    let env = Env::local();
    let (_listener, port) = sshpyk_testhost::silent_listener();
    let config = env.path("ssh_config");
    std::fs::write(&config, format!("Host silent\n  HostName 127.0.0.1\n  Port {port}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")).unwrap();
    // add cannot reach it either: it warns and writes the kernelspec.
    env.sshpyk()
        .args([
            "add",
            "--kernel-name",
            "s",
            "--ssh-host-alias",
            "silent",
            "--remote-kernel-name",
            "python3",
        ])
        .args([
            "--remote-python",
            "/usr/bin/python3",
            "--launch-timeout",
            "2",
            "--ssh-config",
        ])
        .arg(&config)
        .assert()
        .success();
    let (conn, info) = env.connection_file("a");
    let started = Instant::now();
    let mut launcher = env.launch("s", &conn);
    let status = launcher
        .wait_timeout(Duration::from_secs(10))
        .expect("launcher gives up");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(6), "{}", launcher.log());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(
        launcher.log().contains("did not finish within 2 s"),
        "{}",
        launcher.log()
    );
    for (_, port) in info.ports() {
        assert!(port_is_free(port));
    }
}

#[tokio::test]
async fn a_port_in_use_fails_with_a_clear_error_and_leaves_nothing() {
    let env = Env::with_host();
    let kernel = env.add_kernel("k", &[]);
    let (conn, info) = env.connection_file("a");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", info.control_port)).unwrap();
    let mut launcher = env.launch(&kernel, &conn);
    let status = launcher
        .wait_timeout(Duration::from_secs(10))
        .expect("launcher fails");
    assert_eq!(status.code(), Some(7));
    let log = launcher.log();
    assert!(
        log.contains(&format!(
            "local port {} (control channel)",
            info.control_port
        )),
        "{log}"
    );
    assert!(env.remote_processes("ipykernel").is_empty());
    assert!(port_is_free(info.shell_port));
}

#[test]
fn bad_connection_files_are_refused() {
    let env = Env::with_host();
    let kernel = env.add_kernel("k", &[]);
    let (good, _) = env.connection_file("good");
    let text = std::fs::read_to_string(&good).unwrap();
    let cases = [
        ("missing", None, "cannot read it"),
        (
            "malformed",
            Some("{not json".to_string()),
            "not a valid connection file",
        ),
        (
            "scheme",
            Some(text.replace("hmac-sha256", "hmac-md5")),
            "signature_scheme 'hmac-md5' is not supported",
        ),
        (
            "transport",
            Some(text.replace("\"tcp\"", "\"ipc\"")),
            "transport 'ipc' is not supported",
        ),
    ];
    for (name, content, message) in cases {
        let path = env.path(&format!("{name}.json"));
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let mut launcher = env.launch(&kernel, &path);
        let status = launcher
            .wait_timeout(Duration::from_secs(10))
            .expect("launcher exits");
        assert_eq!(status.code(), Some(3), "{name}: {}", launcher.log());
        let log = launcher.log();
        assert!(
            log.contains(message) && log.lines().count() == 1,
            "{name}: {log}"
        );
    }
}

#[tokio::test]
async fn sigint_interrupts_a_message_mode_kernel_too() {
    let env = Env::with_host();
    // A remote kernelspec that asks for interrupt_request messages.
    let spec_dir = env.path("remote-data/kernels/msgmode");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let spec = serde_json::json!({
        "argv": [common::venv_python(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Message mode", "language": "python", "interrupt_mode": "message",
    });
    std::fs::write(spec_dir.join("kernel.json"), spec.to_string()).unwrap();
    env.add_command("msgmode", &["--kernel-name", "m"])
        .assert()
        .success();
    assert_eq!(env.read_kernel_json("m")["interrupt_mode"], "message");

    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch("m", &conn);
    launcher.wait_ready(START);
    let c = ready_client(&info).await;
    // VS Code only knows signals: SIGINT must work whatever the kernel's mode.
    interrupt_busy_kernel(c, &launcher).await;
}

#[tokio::test]
async fn a_master_killed_with_sigkill_leaves_a_stale_socket_that_is_replaced() {
    let env = Env::with_host();
    env.add_kernel("k", &[]);
    let masters = || -> Vec<i32> {
        let config = env.ssh_config().to_string_lossy().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .is_ok_and(|c| c.contains(&config) && c.contains("ControlMaster=yes"))
            })
            .collect()
    };
    let before = masters();
    assert_eq!(before.len(), 1, "add opens one master");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), Signal::SIGKILL).unwrap();
    assert!(eventually(Duration::from_secs(5), || masters().is_empty()));
    let sockets = std::fs::read_dir(env.path("rt"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cm-"))
        .count();
    assert_eq!(sockets, 1, "the dead master's socket file is left behind");

    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch("k", &conn);
    launcher.wait_ready(START);
    let mut c = ready_client(&info).await;
    assert_eq!(c.execute("print(1)", STEP).await.unwrap().stdout, "1\n");
    // One new master, and no plain connection left in the background.
    assert_eq!(masters().len(), 1, "{}", launcher.log());
}

/// Jupyter started as `jupyter lab 2>&1 | tee log`, and the tee gone: the launcher's stderr is a
/// broken pipe. What the kernel process prints on its own stdout then costs that text, never
/// the session (it used to panic the reader and reconnect at every line).
#[tokio::test]
async fn a_broken_stderr_costs_the_kernels_own_text_and_nothing_else() {
    let env = Env::with_host();
    let kernel = env.add_kernel("k", &[]);
    let (conn, info) = env.connection_file("a");
    let (reader, writer) = std::io::pipe().unwrap();
    let mut cmd = env.launcher_command(&kernel, &conn);
    cmd.stderr(writer);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut said = String::new();
    let mut lines = std::io::BufReader::new(reader);
    while !said.contains("ready: kernel pid") {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut lines, &mut line).unwrap() > 0,
            "{said}"
        );
        said.push_str(&line);
    }
    drop(lines); // the pipe is broken from now on
    let mut c = common::ready_client(&info).await;
    let print_200 = "import os, sys\nfd = sys.stdout._original_stdstream_copy\n\
for i in range(200):\n    os.write(fd, b'\\x1b]0;title\\x07line %d\\n' % i)";
    c.execute(print_200, STEP).await.unwrap();
    let r = c.execute("print(6 * 7)", STEP).await.unwrap();
    assert_eq!(r.stdout, "42\n");
    // The session stayed up: the launcher's own log file (`sshpyk logs`) tells no reconnection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = env.path("rt/logs/k");
    let log: String = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .collect();
    assert!(log.contains("ready: kernel pid"), "{log}");
    assert!(!log.contains("connection lost"), "{log}");
    assert!(child.try_wait().unwrap().is_none(), "the launcher died");
    let _ = child.kill();
    let _ = child.wait();
}
