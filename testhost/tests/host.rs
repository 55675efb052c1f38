//! End-to-end tests of the fixture: real sshd, real ssh client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::geteuid;
use nix::unistd::Pid;
use sshpyk_testhost::{
    python_venv, python_venv_for, Mode, RemoteHost, TestUser, CHATTY_BASHRC_STDERR,
    CHATTY_BASHRC_STDOUT, CHATTY_PROFILE_STDOUT, CHATTY_USER,
};

fn ssh(host: &RemoteHost, options: &[&str], command: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg(host.ssh_config())
        .args(options)
        .arg(host.alias())
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh")
}

fn assert_echo_ok(host: &RemoteHost) {
    let out = ssh(host, &[], "echo ok");
    assert!(
        out.status.success(),
        "ssh failed: {}\nsshd.log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(host.sshd_log()).unwrap_or_default()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

fn netns_available() -> bool {
    let available = Mode::Auto.resolve() == Mode::Netns;
    if !available {
        eprintln!("skipped: network namespaces need root and a working `ip netns`");
    }
    available
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn routes(query: &str) -> String {
    let out = Command::new("ip")
        .arg("route")
        .args(query.split(' '))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Polls `condition` for up to 5 s.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts a remote `sleep` that detaches from its session, and returns its pid.
fn start_detached_sleep(host: &RemoteHost) -> u32 {
    let out = ssh(
        host,
        &[],
        "setsid nohup sleep 300 >/dev/null 2>&1 < /dev/null & echo $!",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The last line: a chatty user's start-up files print before the command's output.
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().unwrap().parse().unwrap()
}

#[test]
fn loopback_host_serves_ssh_and_cleans_up() {
    let host = RemoteHost::builder()
        .mode(Mode::Loopback)
        .alias("lo-host")
        .start()
        .unwrap();
    assert_eq!(host.mode(), Mode::Loopback);
    assert_eq!(host.address(), "127.0.0.1");
    assert_eq!(host.netns(), None);
    assert!(host.link_down().is_err());
    assert_echo_ok(&host);

    let sshd = host.sshd_pid().unwrap();
    let sleep = start_detached_sleep(&host);
    let remote = host.remote_pids();
    assert!(
        remote.contains(&sshd) && remote.contains(&sleep),
        "{remote:?}"
    );

    let dir = host.dir().to_path_buf();
    let port = host.port();
    drop(host);
    assert!(!running(sshd) && !running(sleep));
    assert!(!dir.exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn netns_host_serves_ssh_survives_a_link_cut_and_cleans_up() {
    if !netns_available() {
        return;
    }
    let host = RemoteHost::builder()
        .mode(Mode::Netns)
        .alias("ns-host")
        .start()
        .unwrap();
    let netns = host.netns().unwrap().to_string();
    assert!(host.address().starts_with("10.231.") && host.address().ends_with(".2"));
    assert_eq!(host.port(), 22);
    assert_echo_ok(&host);

    // The remote's loopback is its own: sshd listens on the namespace's address only.
    let out = host.remote_command("ss", ["-ltn"]).output().unwrap();
    let listening = String::from_utf8_lossy(&out.stdout);
    assert!(
        listening.contains(&format!("{}:22", host.address())),
        "{listening}"
    );

    host.link_down().unwrap();
    let out = ssh(&host, &["-o", "ConnectTimeout=2"], "echo ok");
    assert!(!out.status.success());
    // Cut or not, traffic for the host must never leave through another interface.
    assert!(!routes(&format!("get {}", host.address())).contains(" via "));
    host.link_up().unwrap();
    assert!(eventually(|| ssh(&host, &[], "echo ok").status.success()));

    let sshd = host.sshd_pid().unwrap();
    let sleep = start_detached_sleep(&host);
    assert!(host.remote_pids().contains(&sleep));
    let dir = host.dir().to_path_buf();
    let subnet = host.address().replace(".2", ".0/24");
    host.stop().unwrap();
    assert!(!netns_exists(&netns));
    assert_eq!(routes(&format!("show {subnet}")), "");
    assert!(!running(sshd) && !running(sleep));
    assert!(!dir.exists());
}

#[test]
fn killing_sshd_connections_drops_clients_but_keeps_the_listener() {
    let host = RemoteHost::builder().start().unwrap();
    let mut client = Command::new("ssh")
        .arg("-F")
        .arg(host.ssh_config())
        .arg(host.alias())
        .arg("sleep 60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sessions_up = || {
        host.remote_pids().into_iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
        })
    };
    assert!(eventually(sessions_up));
    assert!(host.kill_sshd_connections().unwrap() > 0);
    assert!(eventually(|| client.try_wait().unwrap().is_some()));
    assert_echo_ok(&host);
}

#[test]
fn control_master_is_shared_by_later_connections() {
    let host = RemoteHost::builder().control_master(true).start().unwrap();
    let config = std::fs::read_to_string(host.ssh_config()).unwrap();
    assert!(config.contains("ControlMaster auto") && config.contains("ControlPersist 60"));
    assert_echo_ok(&host);
    let check = Command::new("ssh")
        .arg("-F")
        .arg(host.ssh_config())
        .args(["-O", "check"])
        .arg(host.alias())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_echo_ok(&host);
}

#[test]
fn extra_sshd_config_takes_effect() {
    let host = RemoteHost::builder()
        .mode(Mode::Loopback)
        .extra_sshd_config("Banner none\nAllowTcpForwarding no")
        .start()
        .unwrap();
    assert_echo_ok(&host);
    let out = ssh(
        &host,
        &["-o", "ExitOnForwardFailure=yes", "-L", "0:127.0.0.1:9"],
        "true",
    );
    assert!(!out.status.success(), "forwarding should have been refused");
}

#[test]
fn parallel_hosts_are_distinct() {
    let hosts: Vec<RemoteHost> = (0..4)
        .map(|_| thread::spawn(|| RemoteHost::builder().start().unwrap()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let mut endpoints: Vec<(String, u16)> = hosts
        .iter()
        .map(|h| (h.address().to_string(), h.port()))
        .collect();
    endpoints.sort();
    endpoints.dedup();
    assert_eq!(endpoints.len(), hosts.len());
    for host in &hosts {
        assert_echo_ok(host);
    }
}

fn spawn_binary(extra_args: &[&str]) -> (std::process::Child, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sshpyk-testhost"))
        .args(extra_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, serde_json::from_str(&line).unwrap())
}

#[test]
fn binary_prints_the_host_and_cleans_up_at_stdin_eof() {
    let (mut child, info) = spawn_binary(&["--alias", "bin-host", "--control-master"]);
    assert_eq!(info["alias"], "bin-host");
    let out = Command::new("ssh")
        .arg("-F")
        .arg(info["ssh_config"].as_str().unwrap())
        .args(["bin-host", "echo ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(!Path::new(info["dir"].as_str().unwrap()).exists());
    if let Some(netns) = info["netns"].as_str() {
        assert!(!netns_exists(netns));
    }
}

#[test]
fn binary_cleans_up_on_sigterm() {
    let (mut child, info) = spawn_binary(&["--ignore-stdin"]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!Path::new(info["dir"].as_str().unwrap()).exists());
}

/// Pids whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn a_later_start_cleans_up_after_a_killed_process() {
    let (mut child, info) = spawn_binary(&[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = Path::new(info["dir"].as_str().unwrap());
    let sshd = pids_mentioning(&format!("{}/sshd_config", dir.display()));
    assert!(dir.exists(), "a killed process cannot have cleaned up");
    assert!(!sshd.is_empty(), "no sshd for {}", dir.display());

    let _host = RemoteHost::builder().start().unwrap();
    assert!(!dir.exists());
    assert!(sshd.iter().all(|&pid| !running(pid)), "{sshd:?}");
}

#[test]
fn python_venv_has_a_jupyter_client() {
    let venv = python_venv().unwrap();
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import jupyter_client, ipykernel, nbclient, jupyter_server",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chatty_user_sessions_print_their_banners_before_the_command_output() {
    if !geteuid().is_root() {
        eprintln!("skipped: creating the chatty test user needs root");
        return;
    }
    let host = RemoteHost::builder()
        .login_user(TestUser::Chatty)
        .start()
        .unwrap();
    assert_eq!(host.login_user(), CHATTY_USER);
    let config = std::fs::read_to_string(host.ssh_config()).unwrap();
    assert!(
        config.contains(&format!("User {CHATTY_USER}\n")),
        "{config}"
    );

    let out = ssh(&host, &[], "echo hi; id -un; echo $SHELL");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ssh failed: {stderr}\nsshd.log:\n{}",
        std::fs::read_to_string(host.sshd_log()).unwrap_or_default()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{CHATTY_BASHRC_STDOUT}\nhi\n{CHATTY_USER}\n/bin/bash\n")
    );
    assert_eq!(stderr, format!("{CHATTY_BASHRC_STDERR}\n"));
    let login = ssh(&host, &[], "exec bash -l -c 'echo login'");
    assert!(
        String::from_utf8_lossy(&login.stdout).contains(CHATTY_PROFILE_STDOUT),
        "{login:?}"
    );

    let sleep = start_detached_sleep(&host);
    assert!(host.remote_pids().contains(&sleep));
    let venv = python_venv_for(TestUser::Chatty).unwrap();
    TestUser::Chatty.check_venv(&venv).unwrap();
    host.stop().unwrap();
    assert!(!running(sleep));
}

/// An `ssh <host> cat` session: lines written come back through the remote.
struct CatSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl CatSession {
    fn open(host: &RemoteHost) -> Self {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(host.ssh_config())
            .arg(host.alias())
            .arg("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut session = CatSession {
            child,
            stdin,
            lines,
        };
        // The login's round trips are behind us once a first line came back.
        session.send("hello");
        session.expect("hello", Duration::from_secs(15));
        session
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn expect(&self, line: &str, within: Duration) {
        assert_eq!(self.lines.recv_timeout(within).unwrap(), line);
    }

    fn round_trip(&mut self) -> Duration {
        let started = Instant::now();
        self.send("ping");
        self.expect("ping", Duration::from_secs(5));
        started.elapsed()
    }

    /// Whether ssh ended within 5 s (its connection was closed).
    fn ends(&mut self) -> bool {
        eventually(|| self.child.try_wait().unwrap().is_some())
    }
}

impl Drop for CatSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds from ssh's start to its last byte of `head -c <bytes>`, and from its first byte.
fn download(host: &RemoteHost, bytes: usize) -> (Duration, Duration) {
    let started = Instant::now();
    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(host.ssh_config())
        .arg(host.alias())
        .arg(format!("head -c {bytes} /dev/zero"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0; 1];
    stdout.read_exact(&mut first).unwrap();
    let first_byte = Instant::now();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len() + 1, bytes);
    assert!(child.wait().unwrap().success());
    (started.elapsed(), first_byte.elapsed())
}

#[test]
fn rtt_delays_every_round_trip_but_not_bulk_throughput() {
    let rtt = Duration::from_millis(100);
    let host = RemoteHost::builder().rtt(rtt).start().unwrap();
    let port = host.proxy_port().unwrap();
    let config = std::fs::read_to_string(host.ssh_config()).unwrap();
    assert!(
        config.contains(&format!("HostName 127.0.0.1\n    Port {port}\n")),
        "{config}"
    );

    // TCP handshake, banners, key exchange, authentication, session: a round trip each at
    // least.
    let started = Instant::now();
    assert_echo_ok(&host);
    let login = started.elapsed();
    assert!(login >= rtt * 5, "{login:?}");

    let mut session = CatSession::open(&host);
    for _ in 0..3 {
        let took = session.round_trip();
        assert!(took >= rtt && took < rtt * 3, "{took:?}");
    }

    // 8 MB, one 64 KiB chunk per RTT, would take 12 s; pipelined, ssh's 2 MiB channel window
    // per RTT allows 20 MB/s.
    let (_, streaming) = download(&host, 8_000_000);
    assert!(streaming < Duration::from_secs(3), "{streaming:?}");

    drop(host);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(session.ends(), "the session outlived the host");
}

#[test]
fn rate_caps_a_bulk_transfer() {
    let host = RemoteHost::builder().rate(2_000_000).start().unwrap();
    assert!(host.proxy_port().is_some());
    let (_, streaming) = download(&host, 3_000_000);
    assert!(
        streaming >= Duration::from_millis(1300) && streaming < Duration::from_secs(6),
        "{streaming:?}"
    );
}

#[test]
fn rtt_zero_adds_no_proxy() {
    let host = RemoteHost::builder().rtt(Duration::ZERO).start().unwrap();
    assert_eq!(host.proxy_port(), None);
    let config = std::fs::read_to_string(host.ssh_config()).unwrap();
    assert!(
        config.contains(&format!(
            "HostName {}\n    Port {}\n",
            host.address(),
            host.port()
        )),
        "{config}"
    );
    let mut session = CatSession::open(&host);
    let took = session.round_trip();
    assert!(took < Duration::from_millis(50), "{took:?}");
}

#[test]
fn a_link_cut_stalls_the_delayed_link_without_closing_it() {
    if !netns_available() {
        return;
    }
    let host = RemoteHost::builder()
        .mode(Mode::Netns)
        .rtt(Duration::from_millis(50))
        .start()
        .unwrap();
    let mut session = CatSession::open(&host);
    host.link_down().unwrap();
    let out = ssh(&host, &["-o", "ConnectTimeout=2"], "echo ok");
    assert!(
        !out.status.success(),
        "a new connection got through the cut"
    );
    session.send("during the cut");
    thread::sleep(Duration::from_secs(1));
    assert!(
        session.child.try_wait().unwrap().is_none(),
        "the proxy closed the client's connection"
    );
    assert!(session.lines.try_recv().is_err());
    host.link_up().unwrap();
    // TCP's retransmission backoff after a 3 s outage is a few seconds.
    session.expect("during the cut", Duration::from_secs(15));
    assert_echo_ok(&host);
}

#[test]
fn binary_puts_a_delay_proxy_in_front_with_rtt_ms() {
    let (mut child, info) = spawn_binary(&["--alias", "far-host", "--rtt-ms", "100"]);
    assert_eq!(info["rtt_ms"], 100);
    let port = info["proxy_port"].as_u64().unwrap();
    let ssh_ok = |timeout: &str| {
        Command::new("ssh")
            .arg("-F")
            .arg(info["ssh_config"].as_str().unwrap())
            .args([
                "-o",
                &format!("ConnectTimeout={timeout}"),
                "far-host",
                "true",
            ])
            .status()
            .unwrap()
            .success()
    };
    let started = Instant::now();
    assert!(ssh_ok("5"));
    assert!(started.elapsed() >= Duration::from_millis(500));

    let run = |argv: &serde_json::Value| {
        let argv: Vec<&str> = argv
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(Command::new(argv[0])
            .args(&argv[1..])
            .status()
            .unwrap()
            .success());
    };
    if info["netns"].is_string() {
        run(&info["link_down"]);
        assert!(!ssh_ok("2"));
        run(&info["link_up"]);
        assert!(eventually(|| ssh_ok("5")));
    } else {
        assert!(info["link_down"].is_null() && info["link_up"].is_null());
    }

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(TcpStream::connect(("127.0.0.1", port as u16)).is_err());
}
