//! Test environment: a private temp dir standing in for every directory sshpyk would touch
//! (Jupyter data and runtime dirs, HOME, its runtime dir), a real remote host from
//! sshpyk-testhost, and helpers to run the real binary.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sshpyk::jupyter::connection::ConnectionInfo;
use sshpyk::jupyter::{ExecuteResult, KernelClient};
use sshpyk_testhost::{RemoteHost, RemoteHostBuilder, TestUser};
use tempfile::TempDir;

pub struct Env {
    pub dir: TempDir,
    pub host: Option<RemoteHost>,
    /// The host's bastion, when it sits behind one (dropped after it).
    pub bastion: Option<RemoteHost>,
    /// The venv the remote user runs (see [`sshpyk_testhost::python_venv_for`]).
    pub remote_venv: PathBuf,
}

impl Env {
    /// No remote host: for tests of local behaviour and bad input.
    pub fn local() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sshpyk-test-")
            .tempdir()
            .expect("temp dir");
        for sub in [
            "home",
            "data",
            "runtime",
            "rt",
            "remote-home",
            "remote-runtime",
            "remote-data",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // SSHPYK_RUNTIME_DIR must be private when it exists.
        std::fs::set_permissions(dir.path().join("rt"), PermissionsExt::from_mode(0o700)).unwrap();
        Env {
            dir,
            host: None,
            bastion: None,
            remote_venv: venv(),
        }
    }

    /// With a real sshd "remote host" as [`Env::remote_host`] makes it by default: the common
    /// case, in one call.
    pub fn with_host() -> Self {
        Self::remote_host().build()
    }

    /// A builder for an Env with a real sshd "remote host" (its own network namespace when
    /// running as root): what the host should be like, then [`EnvBuilder::build`] (or
    /// [`EnvBuilder::build_to_cut`]). The test's dir exists from here on, for what a session variable
    /// names.
    pub fn remote_host() -> EnvBuilder {
        EnvBuilder {
            env: Self::local(),
            host: RemoteHost::builder(),
            user: TestUser::Current,
            sshd_config: String::new(),
            session_env: Vec::new(),
            behind_bastion: false,
        }
    }

    pub fn host(&self) -> &RemoteHost {
        self.host.as_ref().expect("this Env has no remote host")
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// [`Env::path`], made a directory (with its parents).
    pub fn new_dir(&self, sub: &str) -> PathBuf {
        let dir = self.path(sub);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn ssh_config(&self) -> PathBuf {
        self.host().ssh_config().to_owned()
    }

    /// The test host's ssh config with each of `options` (a keyword such as `IdentityFile`, its
    /// value) in place of the line that sets it.
    pub fn ssh_config_with(&self, options: &[(&str, &Path)]) -> String {
        std::fs::read_to_string(self.ssh_config())
            .unwrap()
            .lines()
            .map(|line| {
                let keyword = line.split_whitespace().next();
                match options.iter().find(|(option, _)| Some(*option) == keyword) {
                    Some((option, value)) => format!("    {option} {}\n", value.display()),
                    None => format!("{line}\n"),
                }
            })
            .collect()
    }

    /// A copy of the test host's ssh config, written to `name`, that offers a fresh key the host
    /// does not know: its authentication would need a human.
    pub fn ssh_config_with_an_unknown_key(&self, name: &str) -> PathBuf {
        let key = self.path(&format!("{name}_key"));
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success());
        let config = self.path(name);
        std::fs::write(&config, self.ssh_config_with(&[("IdentityFile", &key)])).unwrap();
        config
    }

    /// The environment every sshpyk process of the test gets.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("HOME", self.path("home"))
            .env("JUPYTER_DATA_DIR", self.path("data"))
            .env("JUPYTER_RUNTIME_DIR", self.path("runtime"))
            .env("SSHPYK_RUNTIME_DIR", self.path("rt"))
            .env_remove("JUPYTER_PATH")
            .env_remove("VIRTUAL_ENV")
            .env_remove("CONDA_PREFIX")
            .env_remove("XDG_DATA_HOME")
            .env("NO_COLOR", "1");
    }

    pub fn sshpyk(&self) -> assert_cmd::Command {
        let mut std_cmd = Command::new(env!("CARGO_BIN_EXE_sshpyk"));
        self.apply(&mut std_cmd);
        assert_cmd::Command::from_std(std_cmd)
    }

    /// `sshpyk add` for the test host's venv kernel; returns the kernel name.
    pub fn add_kernel(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["--kernel-name", name];
        args.extend_from_slice(extra);
        self.add_command("python3", &args).assert().success();
        name.to_string()
    }

    /// `sshpyk add` of `remote_kernel` on host `alias`, the other flags left to the caller.
    pub fn add_on(&self, alias: &str, remote_kernel: &str) -> assert_cmd::Command {
        let mut cmd = self.sshpyk();
        cmd.args(["add", "--ssh-host-alias", alias])
            .args(["--remote-kernel-name", remote_kernel]);
        cmd
    }

    /// `sshpyk add` of `remote_kernel` on the test host's venv, plus `extra` flags.
    pub fn add_command(&self, remote_kernel: &str, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.add_on("remote", remote_kernel);
        cmd.arg("--remote-python-prefix")
            .arg(&self.remote_venv)
            .arg("--ssh-config")
            .arg(self.ssh_config())
            .args(extra);
        cmd
    }

    pub fn kernel_dir(&self, name: &str) -> PathBuf {
        self.path("data").join("kernels").join(name)
    }

    pub fn read_kernel_json(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.kernel_dir(name).join("kernel.json"))
            .expect("kernel.json");
        serde_json::from_str(&text).unwrap()
    }

    /// Changes kernel `name`'s sshpyk settings in its kernel.json behind sshpyk's back (as a
    /// hand edit would, or a host that changed since `add`).
    pub fn change_settings(&self, name: &str, change: impl FnOnce(&mut serde_json::Value)) {
        let mut spec = self.read_kernel_json(name);
        change(&mut spec["metadata"]["sshpyk"]);
        std::fs::write(self.kernel_dir(name).join("kernel.json"), spec.to_string()).unwrap();
    }

    /// A connection file as Jupyter writes it: five free local ports and a fresh key. The ports
    /// come from `free_port`, which never hands out a port twice in this process and stays out
    /// of the ephemeral range, so parallel tests cannot get the same ones.
    pub fn connection_file(
        &self,
        name: &str,
    ) -> (PathBuf, sshpyk::jupyter::connection::ConnectionInfo) {
        let ports: Vec<u16> = (0..5).map(|_| sshpyk_testhost::free_port()).collect();
        let key = uuid::Uuid::new_v4().to_string();
        let text = serde_json::json!({
            "ip": "127.0.0.1", "transport": "tcp", "signature_scheme": "hmac-sha256", "key": key,
            "shell_port": ports[0], "iopub_port": ports[1], "stdin_port": ports[2],
            "control_port": ports[3], "hb_port": ports[4], "kernel_name": "test",
        })
        .to_string();
        let path = self.path("runtime").join(format!("kernel-{name}.json"));
        std::fs::write(&path, &text).unwrap();
        // As Jupyter writes it: private.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        (
            path,
            sshpyk::jupyter::connection::ConnectionInfo::parse(&text).unwrap(),
        )
    }

    /// Starts the launcher exactly as kernel.json says, with stderr kept in a file.
    pub fn launch(&self, kernel: &str, connection_file: &Path) -> Launcher {
        self.launch_with_env(kernel, connection_file, &[])
    }

    /// [`Env::launch`] with extra environment variables (as jupyter_client sets JPY_PARENT_PID).
    pub fn launch_with_env(
        &self,
        kernel: &str,
        connection_file: &Path,
        vars: &[(&str, &str)],
    ) -> Launcher {
        let log = self.path(&format!("launcher-{}.log", uuid::Uuid::new_v4()));
        let mut cmd = self.launcher_command(kernel, connection_file);
        cmd.stderr(std::fs::File::create(&log).unwrap());
        cmd.envs(vars.iter().copied());
        Launcher {
            child: cmd.spawn().expect("launcher starts"),
            log,
        }
    }

    /// The launcher's command line as Jupyter runs it from kernel.json (stderr left to the
    /// caller).
    pub fn launcher_command(&self, kernel: &str, connection_file: &Path) -> Command {
        let spec = self.read_kernel_json(kernel);
        let argv: Vec<String> = spec["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("{connection_file}", &connection_file.to_string_lossy())
            })
            .collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Like jupyter_client: the kernel gets its own process group.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.apply(&mut cmd);
        cmd
    }

    /// Closes the ControlMaster sshpyk opened for the test host (`ssh -O exit`).
    pub fn close_master(&self) {
        let status = Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .arg("-o")
            .arg(format!("ControlPath={}/cm-%C", self.path("rt").display()))
            .args(["-O", "exit", "remote"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "no master to close");
    }

    /// Adds kernel "k" with `extra` flags and starts it as Jupyter would, up to "ready".
    pub fn start_kernel(&self, extra: &[&str]) -> (Launcher, ConnectionInfo) {
        let kernel = self.add_kernel("k", extra);
        let (conn, info) = self.connection_file("a");
        let mut launcher = self.launch(&kernel, &conn);
        launcher.wait_ready(Duration::from_secs(60));
        (launcher, info)
    }

    /// Starts `kernel` as Jupyter would, with a connection file of its own, and waits (30 s at
    /// most) for the launcher to give up: its exit code and its log.
    pub fn failed_launch(&self, kernel: &str) -> (Option<i32>, String) {
        let (conn, _) = self.connection_file(&format!("fail-{}", uuid::Uuid::new_v4()));
        let mut launcher = self.launch(kernel, &conn);
        let status = launcher
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the launcher did not give up:\n{}", launcher.log()));
        (status.code(), launcher.log())
    }

    /// Processes on the remote whose command line contains `needle` (kernels, supervisors).
    pub fn remote_processes(&self, needle: &str) -> Vec<u32> {
        self.host()
            .remote_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Whether every remote process whose command line contains `needle` ends within `timeout`.
    pub fn remote_processes_end(&self, needle: &str, timeout: Duration) -> bool {
        eventually(timeout, || self.remote_processes(needle).is_empty())
    }

    /// Processes of this machine outside the remote host whose command line contains `needle`
    /// (the launcher's ssh processes name the test's ssh config).
    pub fn local_processes(&self, needle: &str) -> Vec<u32> {
        let remote = self.host().remote_pids();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| !remote.contains(pid) && *pid != std::process::id())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Files left in the remote Jupyter runtime dir (the supervisor's run dirs).
    pub fn remote_run_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path("remote-runtime"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("sshpyk-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What an Env's remote host is like, from [`Env::remote_host`]; each option is independent of
/// the others.
pub struct EnvBuilder {
    env: Env,
    host: RemoteHostBuilder,
    user: TestUser,
    sshd_config: String,
    /// The sessions' `SetEnv` assignments beyond the Jupyter dirs (a name given again wins).
    session_env: Vec<(String, PathBuf)>,
    behind_bastion: bool,
}

impl EnvBuilder {
    /// The client logs in as `user` (default: the current one).
    pub fn user(mut self, user: TestUser) -> Self {
        self.user = user;
        self
    }

    /// sshd_config text that goes first, so that it wins over the defaults (calls accumulate).
    pub fn sshd_config(mut self, text: &str) -> Self {
        self.sshd_config.push_str(text);
        self
    }

    /// The host is `rtt` away: sshpyk-testhost's delay proxy holds every chunk for `rtt / 2`
    /// each way (a netns host's link can still be cut behind it).
    pub fn rtt(mut self, rtt: Duration) -> Self {
        self.host = self.host.rtt(rtt);
        self
    }

    /// The host is reachable only through another one, the bastion, as `ProxyJump` in the ssh
    /// config says (network namespaces: needs root).
    pub fn behind_bastion(mut self) -> Self {
        self.behind_bastion = true;
        self
    }

    /// The host runs a single-node Slurm cluster too, its files in the test's `slurm` dir
    /// (network namespaces and slurm-wlm: needs root); its sessions have `SLURM_CONF`.
    pub fn slurm(mut self) -> Self {
        let dir = self.env.path("slurm");
        self.host = self.host.slurm(&dir);
        self.session_env("SLURM_CONF", |_| dir.join("slurm.conf"))
    }

    /// The host's sessions get `name` set to what `value` returns (`SetEnv`: it overrides
    /// sshd's defaults, PATH too, and the Jupyter dirs the Env sets). `value` may first make
    /// what it names in the test's dir.
    pub fn session_env(mut self, name: &str, value: impl FnOnce(&Env) -> PathBuf) -> Self {
        let value = value(&self.env);
        self.session_env.push((name.to_string(), value));
        self
    }

    /// For a test that cuts the link (`link_down`): only a host in a network namespace of its
    /// own has one to cut, which needs root. `None`, said on stderr, without.
    pub fn build_to_cut(self) -> Option<Env> {
        let env = self.build();
        if env.host().netns().is_none() {
            eprintln!("skipped: cutting a link needs a network namespace (run as root)");
            return None;
        }
        Some(env)
    }

    /// Starts the host (and its bastion).
    pub fn build(self) -> Env {
        let EnvBuilder {
            mut env,
            mut host,
            user,
            sshd_config,
            session_env,
            behind_bastion,
        } = self;
        if behind_bastion {
            let bastion = RemoteHost::builder()
                .alias("bastion")
                .start()
                .expect("starting the bastion's sshd");
            host = host.behind(&bastion);
            env.bastion = Some(bastion);
        }
        // The remote side is this machine's filesystem: keep its Jupyter dirs in our temp dir,
        // and for the current user its home too, so that no developer's shell start-up files
        // run. A dedicated user keeps the home the host made it (its start-up files are the
        // point) and gets the Jupyter dirs as its own.
        let var = |name: &str, sub| (name.to_string(), env.path(sub));
        let mut vars = vec![
            var("JUPYTER_RUNTIME_DIR", "remote-runtime"),
            var("JUPYTER_DATA_DIR", "remote-data"),
        ];
        if user == TestUser::Current {
            vars.push(var("HOME", "remote-home"));
        }
        for (name, value) in session_env {
            match vars.iter_mut().find(|(known, _)| *known == name) {
                Some(var) => var.1 = value,
                None => vars.push((name, value)),
            }
        }
        let set_env: String = vars
            .iter()
            .map(|(name, value)| format!(" {name}={}", value.display()))
            .collect();
        let host = host
            .alias("remote")
            .login_user(user)
            .extra_sshd_config(&format!("{sshd_config}SetEnv{set_env}\n"))
            .start()
            .expect("starting the test sshd");
        env.remote_venv =
            sshpyk_testhost::python_venv_for(user).expect("a venv the test user can run");
        if user != TestUser::Current {
            let (uid, gid) = host.login_ids();
            std::fs::set_permissions(env.dir.path(), PermissionsExt::from_mode(0o711)).unwrap();
            for sub in ["remote-runtime", "remote-data"] {
                nix::unistd::chown(&env.path(sub), Some(uid), Some(gid)).unwrap();
            }
        }
        env.host = Some(host);
        env
    }
}

/// Starts `kernel` as Jupyter would, runs `print(6 * 7)` in it, and ends it with SIGTERM.
pub async fn runs_and_stops(env: &Env, kernel: &str) {
    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch(kernel, &conn);
    launcher.wait_ready(Duration::from_secs(60));
    let mut c = ready_client(&info).await;
    let r = c
        .execute("print(6 * 7)", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.stdout, "42\n");
    c.close();
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(10)).is_some());
}

/// Our own client, connected and past kernel_info.
pub async fn ready_client(info: &ConnectionInfo) -> KernelClient {
    let step = Duration::from_secs(20);
    let mut client = KernelClient::connect(info, step).await.expect("connect");
    client.wait_for_ready(step).await.expect("kernel ready");
    client
}

/// Makes `client`'s kernel busy in a long sleep, sends the launcher SIGINT as Jupyter does,
/// and asserts that the sleep ends in a KeyboardInterrupt; returns that execute's result.
pub async fn interrupt_busy_kernel(mut client: KernelClient, launcher: &Launcher) -> ExecuteResult {
    let busy = tokio::spawn(async move {
        client
            .execute("import time; time.sleep(60)", Duration::from_secs(30))
            .await
    });
    // Let the kernel get into the sleep.
    tokio::time::sleep(Duration::from_secs(1)).await;
    launcher.signal(nix::sys::signal::Signal::SIGINT);
    let r = busy
        .await
        .unwrap()
        .expect("execute returns after the interrupt");
    assert_eq!(
        r.error.as_ref().map(|e| e.0.as_str()),
        Some("KeyboardInterrupt"),
        "{}",
        launcher.log()
    );
    r
}

/// Asserts that the kernel behind `info` is still process `pid` and still has `x == 42`.
pub async fn assert_kept_state(info: &ConnectionInfo, pid: u32) {
    let mut c = ready_client(info).await;
    let r = c
        .execute(
            "print(x, __import__('os').getpid())",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, format!("42 {pid}\n"));
    c.close();
}

/// The venv with jupyter_client + ipykernel (+ nbclient), created once and cached.
pub fn venv() -> PathBuf {
    sshpyk_testhost::python_venv().expect("test venv")
}

pub fn venv_python() -> PathBuf {
    venv().join("bin/python")
}

/// A launcher process started by a test; killed (SIGKILL) on drop if still running.
pub struct Launcher {
    pub child: Child,
    pub log: PathBuf,
}

impl Launcher {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the "ready" log line (or the launcher's exit).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while !self.log().contains("ready: kernel pid") {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("launcher exited ({status}) before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "launcher not ready after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the launcher's log says `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        assert!(
            eventually(timeout, || self.log().contains(needle)),
            "no '{needle}' within {timeout:?}:\n{}",
            self.log()
        );
    }

    /// Waits (30 s at most) until the launcher is back after a cut: reconnected, or its old
    /// connection answered again.
    pub fn wait_back(&self) {
        assert!(
            eventually(Duration::from_secs(30), || {
                let log = self.log();
                log.contains("reconnected after") || log.contains("answers again after")
            }),
            "not back within 30 s:\n{}",
            self.log()
        );
    }

    /// Waits (30 s at most) for the launcher to give up on a kernel that is gone: exit code 8,
    /// and its log says so.
    pub fn assert_gives_up_on_a_gone_kernel(&mut self) {
        let status = self
            .wait_timeout(Duration::from_secs(30))
            .expect("the launcher gives up");
        assert_eq!(status.code(), Some(8), "{}", self.log());
        assert!(self.log().contains("is gone"), "{}", self.log());
    }

    /// The remote kernel pid from the "ready" line.
    pub fn remote_pid(&self) -> u32 {
        let log = self.log();
        let rest = log.split("ready: kernel pid ").nth(1).expect("ready line");
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a finished command said on stderr, checked to be one line (sshpyk's errors are).
pub fn one_line_error(out: &assert_cmd::assert::Assert) -> String {
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

/// A pseudo-terminal of `size` (rows, columns; none: 0 x 0): (controller, terminal). Both are
/// closed on exec: the other tests of this process start children meanwhile, and a terminal one
/// of them held would never hang up.
pub fn pty(size: Option<(u16, u16)>) -> (OwnedFd, OwnedFd) {
    let size = size.map(|(ws_row, ws_col)| nix::pty::Winsize {
        ws_row,
        ws_col,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        nix::fcntl::fcntl(fd, cloexec).expect("FD_CLOEXEC");
    }
    (pty.master, pty.slave)
}

/// Runs `cmd` on `terminal` as a terminal emulator would: its stdin, stdout and stderr, and
/// its controlling terminal, in a session of its own.
pub fn on_terminal(cmd: &mut Command, terminal: &OwnedFd) {
    cmd.stdin(terminal.try_clone().unwrap())
        .stdout(terminal.try_clone().unwrap())
        .stderr(terminal.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// What `cmd` (one of the binary's `--json` commands) printed, once it succeeded.
pub fn json_of(cmd: &mut assert_cmd::Command) -> serde_json::Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}
