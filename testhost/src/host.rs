//! The remote host: an OpenSSH sshd with its own keys and configuration, running in a network
//! namespace or on loopback, and a client configuration that reaches it under an alias.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{geteuid, Gid, Uid};

use crate::delay::{DelayProxy, Link};
use crate::net::Netns;
use crate::registry::{self, Record};
use crate::sshd_files::{ensure_privsep_dir, keygen, quoted, read_public_key, sshd_config, write};
use crate::users::{PrivateEtc, TestUser};
use crate::{free_port, procs};

const SSHD: &str = "/usr/sbin/sshd";
/// Run by `sh -c` in sshd's own mount namespace before it execs sshd: bind-mounts the private
/// passwd, shadow and group files (`$1` to `$3`) over the machine's.
const BIND_ETC: &str = "for f in passwd shadow group; do mount --bind \"$1\" /etc/$f || exit; \
                       shift; done; exec \"$@\"";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Loopback ports are picked before sshd binds them, so another process can take one first.
const LOOPBACK_ATTEMPTS: u32 = 5;

/// Where the remote host lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `Netns` when running as root and `ip netns` works, else `Loopback`.
    #[default]
    Auto,
    /// sshd on 127.0.0.1 and a free port: the "remote" shares this machine's ports.
    Loopback,
    /// sshd on port 22 of its own address inside a network namespace: its loopback ports are
    /// reachable only through ssh, and its link can be cut.
    Netns,
}

impl Mode {
    /// What `Auto` means on this machine; the other modes are returned unchanged.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto if geteuid().is_root() && netns_usable() => Mode::Netns,
            Mode::Auto => Mode::Loopback,
            mode => mode,
        }
    }
}

fn netns_usable() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Mode::Auto),
            "loopback" => Ok(Mode::Loopback),
            "netns" => Ok(Mode::Netns),
            _ => bail!("unknown mode {s:?} (expected auto, loopback or netns)"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Loopback => "loopback",
            Mode::Netns => "netns",
        })
    }
}

/// Options of a [`RemoteHost`]; see [`RemoteHost::builder`].
#[derive(Debug, Clone)]
pub struct RemoteHostBuilder {
    mode: Mode,
    alias: String,
    control_master: bool,
    extra_sshd_config: String,
    login_user: TestUser,
    bastion: Option<Bastion>,
    slurm: Option<PathBuf>,
    link: Link,
}

/// What a host behind a bastion needs to know of it.
#[derive(Debug, Clone)]
struct Bastion {
    alias: String,
    netns: String,
    ssh_config: PathBuf,
}

impl Default for RemoteHostBuilder {
    fn default() -> Self {
        RemoteHostBuilder {
            mode: Mode::Auto,
            alias: "testhost".to_string(),
            control_master: false,
            extra_sshd_config: String::new(),
            login_user: TestUser::Current,
            bastion: None,
            slurm: None,
            link: Link {
                rtt: Duration::ZERO,
                rate: None,
            },
        }
    }
}

impl RemoteHostBuilder {
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The `Host` name of the generated client configuration.
    pub fn alias(mut self, alias: &str) -> Self {
        self.alias = alias.to_string();
        self
    }

    /// Adds `ControlMaster auto`, `ControlPath <dir>/cm-%C` and `ControlPersist 60` to the
    /// client configuration.
    pub fn control_master(mut self, on: bool) -> Self {
        self.control_master = on;
        self
    }

    /// sshd_config text added to the defaults (calls accumulate). Its options take precedence
    /// over the defaults (sshd keeps the first value it reads); `Match` blocks go at the end.
    pub fn extra_sshd_config(mut self, text: &str) -> Self {
        self.extra_sshd_config.push_str(text);
        self.extra_sshd_config.push('\n');
        self
    }

    /// Puts the host behind `bastion` (both in `Mode::Netns`): its network namespace is linked
    /// to the bastion's only, so this machine reaches it only through the bastion, and its
    /// client configuration says `ProxyJump <bastion alias>` and holds the bastion's `Host`
    /// block too. The bastion must outlive this host.
    pub fn behind(mut self, bastion: &RemoteHost) -> Self {
        self.mode = Mode::Netns;
        self.bastion = Some(Bastion {
            alias: bastion.alias.clone(),
            netns: bastion.netns().unwrap_or_default().to_string(),
            ssh_config: bastion.ssh_config.clone(),
        });
        self
    }

    /// Runs a single-node Slurm cluster in the host's namespace (`Mode::Netns`), its files in
    /// `dir`; sessions need `SLURM_CONF=<dir>/slurm.conf` (say with `SetEnv`).
    pub fn slurm(mut self, dir: &Path) -> Self {
        self.mode = Mode::Netns;
        self.slurm = Some(dir.to_path_buf());
        self
    }

    /// The user the client configuration logs in as (`User` in the `Host` block).
    pub fn login_user(mut self, user: TestUser) -> Self {
        self.login_user = user;
        self
    }

    /// Puts a delay proxy between the client and sshd: the client configuration's `HostName`
    /// and `Port` become a loopback port of this process that forwards to sshd, holding every
    /// chunk for half of `rtt` in each direction, as a long link would. Zero (the default) means
    /// no proxy, unless [`RemoteHostBuilder::rate`] asks for one. [`RemoteHost::link_down`]
    /// still cuts the link between the proxy and sshd. Not for a host behind a bastion.
    pub fn rtt(mut self, rtt: Duration) -> Self {
        self.link.rtt = rtt;
        self
    }

    /// Caps each direction of the delay proxy (see [`RemoteHostBuilder::rtt`]) at
    /// `bytes_per_sec`.
    pub fn rate(mut self, bytes_per_sec: u64) -> Self {
        self.link.rate = Some(bytes_per_sec);
        self
    }

    fn wants_proxy(&self) -> bool {
        !self.link.rtt.is_zero() || self.link.rate.is_some()
    }

    pub fn start(self) -> Result<RemoteHost> {
        let mode = self.mode.resolve();
        if let Some(bastion) = &self.bastion {
            if mode != Mode::Netns || bastion.netns.is_empty() {
                bail!("a host behind a bastion needs network namespaces (root), for both hosts");
            }
            if self.wants_proxy() {
                bail!("a host behind a bastion cannot have a delay proxy (rtt or rate)");
            }
        }
        if self.link.rate == Some(0) {
            bail!("a rate of 0 bytes per second would carry nothing");
        }
        ensure_privsep_dir()?;
        let tmp = tempfile::Builder::new()
            .prefix("sshpyk-testhost-")
            .tempdir()
            .context("creating the host's temporary directory")?;
        let dir = tmp.path().to_path_buf();
        // sshd reads authorized_keys as the user logging in: another user must be able to
        // traverse the directory (not list it; the private keys in it stay 0600).
        let dir_mode = if self.login_user == TestUser::Current {
            0o700
        } else {
            0o711
        };
        fs::set_permissions(&dir, fs::Permissions::from_mode(dir_mode))
            .with_context(|| format!("making {} private", dir.display()))?;
        let private_etc = self.login_user.prepare(&dir)?;
        let mut host = RemoteHost {
            mode,
            alias: self.alias.clone(),
            login_user: self.login_user.name()?,
            login_ids: self.login_user.ids()?,
            private_etc,
            address: String::new(),
            port: 0,
            ssh_config: dir.join("ssh_config"),
            record: Record::new(dir)?,
            net: None,
            sshd: None,
            daemons: Vec::new(),
            proxy: None,
            stopped: false,
        };
        // From here on, dropping `host` (on any error) tears down whatever exists so far.
        let _ = tmp.keep();
        {
            let _lock = registry::lock()?;
            registry::clean_stale();
            if mode == Mode::Netns {
                let net = Netns::create()?;
                host.record.netns = Some(net.name.clone());
                host.net = Some(net);
            }
            host.record.save()?;
        }
        host.setup(&self)?;
        if self.wants_proxy() {
            let upstream: SocketAddr = format!("{}:{}", host.address, host.port).parse()?;
            host.proxy = Some(DelayProxy::start(upstream, self.link)?);
            host.write_client_config(&self)?;
        }
        if let (Some(dir), Some(netns)) = (&self.slurm, host.record.netns.clone()) {
            host.daemons = crate::slurm::start(dir, &netns, &host.address)?;
        }
        Ok(host)
    }
}

/// A throwaway remote host. Dropping it (or [`RemoteHost::stop`]) kills every process on the
/// remote side and removes the namespace, the veth pair and the directory.
#[derive(Debug)]
pub struct RemoteHost {
    mode: Mode,
    alias: String,
    login_user: String,
    login_ids: (Uid, Gid),
    /// Bind-mounted in sshd's mount namespace when the login user is a dedicated one.
    private_etc: Option<PrivateEtc>,
    address: String,
    port: u16,
    ssh_config: PathBuf,
    record: Record,
    net: Option<Netns>,
    sshd: Option<Child>,
    /// Daemons beside sshd (Slurm's), ended by the namespace's teardown and reaped then.
    daemons: Vec<Child>,
    proxy: Option<DelayProxy>,
    stopped: bool,
}

impl RemoteHost {
    pub fn builder() -> RemoteHostBuilder {
        RemoteHostBuilder::default()
    }

    /// `Mode::Loopback` or `Mode::Netns` (never `Auto`).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The name the client configuration logs in as.
    pub fn login_user(&self) -> &str {
        &self.login_user
    }

    /// The login user's uid and gid. A dedicated user has no account on this machine (only
    /// inside the host): look its ids up here, not with `getpwnam`.
    pub fn login_ids(&self) -> (Uid, Gid) {
        self.login_ids
    }

    /// The client configuration: `ssh -F <ssh_config> <alias>` reaches the host.
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// sshd's own address, not the delay proxy's.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// sshd's own port, not the delay proxy's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The delay proxy's port on 127.0.0.1, which the client configuration points at, when
    /// the host was built with an RTT or a rate.
    pub fn proxy_port(&self) -> Option<u16> {
        self.proxy.as_ref().map(DelayProxy::port)
    }

    /// The private directory holding keys, configurations and `sshd.log`.
    pub fn dir(&self) -> &Path {
        &self.record.dir
    }

    pub fn netns(&self) -> Option<&str> {
        self.record.netns.as_deref()
    }

    /// The client's private key.
    pub fn identity_file(&self) -> PathBuf {
        self.dir().join("id_ed25519")
    }

    /// sshd's log (LogLevel VERBOSE): worth printing when a test fails.
    pub fn sshd_log(&self) -> PathBuf {
        self.dir().join("sshd.log")
    }

    /// The listening sshd.
    pub fn sshd_pid(&self) -> Option<u32> {
        self.record.sshd.map(|(pid, _)| pid)
    }

    /// A command that runs on the remote host's side without ssh: inside the namespace, or
    /// plainly on this machine in loopback mode. For inspecting the remote (`ss -ltnp`, `ps`).
    pub fn remote_command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = match self.netns() {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.args(args);
        command
    }

    /// The remote side's processes, the listening sshd included: everything in the namespace,
    /// or in loopback mode sshd's descendants and any process started by an ssh session to this
    /// host (sessions carry a marker variable, which finds them even once daemonized).
    pub fn remote_pids(&self) -> Vec<u32> {
        self.record.processes().into_iter().collect()
    }

    /// Cuts the network between this machine and the host (netns mode only): packets are
    /// dropped, so established connections stall and new ones time out, as when a cable is
    /// pulled.
    pub fn link_down(&self) -> Result<()> {
        self.netns_only("link_down")?.set_link(false)
    }

    /// Restores the link cut by [`RemoteHost::link_down`].
    pub fn link_up(&self) -> Result<()> {
        self.netns_only("link_up")?.set_link(true)
    }

    /// The command line that does [`RemoteHost::link_down`] (`up` false) or
    /// [`RemoteHost::link_up`], for a script or another process (netns mode only).
    pub fn link_command(&self, up: bool) -> Result<Vec<String>> {
        Ok(self.netns_only("link_command")?.link_command(up))
    }

    /// Kills sshd's per-connection processes but not the listener, as when the server drops
    /// every connection; processes started by the sessions are left alone. Returns how many
    /// sshd processes were killed.
    pub fn kill_sshd_connections(&self) -> Result<usize> {
        let listener = self.sshd_pid().context("sshd is not running")?;
        let connections: Vec<u32> = procs::descendants(listener)
            .into_iter()
            .filter(|&pid| pid != listener && procs::stat(pid).is_some_and(|s| s.comm == "sshd"))
            .collect();
        let count = connections.len();
        procs::kill_until_gone(
            || connections.iter().copied().collect(),
            Duration::from_secs(5),
        )?;
        Ok(count)
    }

    /// Tears the host down and reports what went wrong, which `Drop` can only print.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        // Clients first see their connections close, as when the remote goes away.
        self.proxy = None;
        let result = self.record.teardown();
        if let Some(mut sshd) = self.sshd.take() {
            // Already killed by the teardown unless that failed; this reaps it.
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        for mut daemon in self.daemons.drain(..) {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        result.with_context(|| format!("tearing down the host in {}", self.dir().display()))
    }

    fn netns_only(&self, what: &str) -> Result<&Netns> {
        self.net
            .as_ref()
            .ok_or_else(|| anyhow!("{what} needs Mode::Netns; this host runs in loopback mode"))
    }

    fn setup(&mut self, options: &RemoteHostBuilder) -> Result<()> {
        let dir = self.dir().to_path_buf();
        keygen(&dir.join("ssh_host_ed25519_key"))?;
        keygen(&self.identity_file())?;
        let user_key = read_public_key(&dir.join("id_ed25519.pub"))?;
        // The marker lets `processes()` find session processes however they detach.
        let marker = self.record.marker().replace('"', "\\\"");
        let authorized_keys = dir.join("authorized_keys");
        write(
            &authorized_keys,
            &format!("environment=\"{marker}\" {user_key}\n"),
        )?;
        // Readable by whichever user logs in (it holds only the public key).
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("making {} readable", authorized_keys.display()))?;
        match &self.net {
            Some(net) => {
                net.configure(options.bastion.as_ref().map(|b| b.netns.as_str()))?;
                self.address = net.remote_address();
            }
            None => self.address = "127.0.0.1".to_string(),
        }
        let attempts = if self.net.is_some() {
            1
        } else {
            LOOPBACK_ATTEMPTS
        };
        for _ in 0..attempts {
            self.port = if self.net.is_some() { 22 } else { free_port() };
            self.write_configs(options)?;
            self.spawn_sshd()?;
            match self.wait_ready(options.bastion.is_none())? {
                Ready::Listening => return Ok(()),
                Ready::PortTaken => {
                    if let Some(mut sshd) = self.sshd.take() {
                        let _ = sshd.wait();
                    }
                }
            }
        }
        bail!("sshd found its port taken {attempts} times in a row")
    }

    fn write_configs(&self, options: &RemoteHostBuilder) -> Result<()> {
        let dir = self.dir();
        write(
            &dir.join("sshd_config"),
            &sshd_config(&self.address, self.port, dir, &options.extra_sshd_config),
        )?;
        self.write_client_config(options)
    }

    /// known_hosts and the client configuration, pointed at the delay proxy once it runs.
    fn write_client_config(&self, options: &RemoteHostBuilder) -> Result<()> {
        let dir = self.dir();
        let host_key = read_public_key(&dir.join("ssh_host_ed25519_key.pub"))?;
        let known_host = |address: &str, port: u16| {
            if port == 22 {
                format!("{address} {host_key}\n")
            } else {
                format!("[{address}]:{port} {host_key}\n")
            }
        };
        // sshd's own address stays known: tests also reach it directly (`ssh -W`).
        let mut known_hosts = known_host(&self.address, self.port);
        let (address, port) = match self.proxy_port() {
            Some(port) => {
                known_hosts.push_str(&known_host("127.0.0.1", port));
                ("127.0.0.1", port)
            }
            None => (self.address.as_str(), self.port),
        };
        write(&dir.join("known_hosts"), &known_hosts)?;
        let mut client = format!(
            "Host {alias}\n    HostName {address}\n    Port {port}\n    User {user}\n    \
             IdentityFile {identity}\n    IdentitiesOnly yes\n    \
             UserKnownHostsFile {known_hosts}\n    StrictHostKeyChecking yes\n    \
             BatchMode yes\n    ConnectTimeout 5\n{jump}",
            alias = self.alias,
            user = self.login_user,
            identity = quoted(&self.identity_file()),
            known_hosts = quoted(&dir.join("known_hosts")),
            jump = match &options.bastion {
                Some(bastion) => format!("    ProxyJump {}\n", bastion.alias),
                None => String::new(),
            },
        );
        if options.control_master {
            client.push_str(&format!(
                "    ControlMaster auto\n    ControlPath {}\n    ControlPersist 60\n",
                quoted(&dir.join("cm-%C"))
            ));
        }
        if let Some(bastion) = &options.bastion {
            let text = fs::read_to_string(&bastion.ssh_config)
                .with_context(|| format!("reading {}", bastion.ssh_config.display()))?;
            client.push_str(&text);
        }
        write(&self.ssh_config, &client)
    }

    fn spawn_sshd(&mut self) -> Result<()> {
        let log_path = self.sshd_log();
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let config = self.dir().join("sshd_config");
        let sshd_args = [
            OsStr::new(SSHD),
            OsStr::new("-D"),
            OsStr::new("-e"),
            OsStr::new("-f"),
            config.as_os_str(),
        ];
        // `ip netns exec`, `unshare` and `sh -c 'exec'` all exec in place, so the child's pid
        // is sshd's.
        let mut command = match &self.private_etc {
            Some(etc) => {
                let mut c = self.remote_command(
                    "unshare",
                    [
                        "--mount",
                        "--propagation",
                        "private",
                        "/bin/sh",
                        "-c",
                        BIND_ETC,
                        "sh",
                    ],
                );
                c.args(&etc.files).args(sshd_args);
                c
            }
            None => self.remote_command(SSHD, &sshd_args[1..]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        let pid = child.id();
        self.sshd = Some(child);
        let start = procs::stat(pid)
            .with_context(|| {
                format!(
                    "sshd (pid {pid}) exited at once; see {}",
                    log_path.display()
                )
            })?
            .start;
        self.record.sshd = Some((pid, start));
        self.record.save()
    }

    /// `reachable_here`: whether this machine can connect to it (not behind a bastion).
    fn wait_ready(&mut self, reachable_here: bool) -> Result<Ready> {
        let log_path = self.sshd_log();
        let listening = format!("Server listening on {} port {}.", self.address, self.port);
        let addr: SocketAddr = format!("{}:{}", self.address, self.port).parse()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let sshd = self.sshd.as_mut().context("sshd was not started")?;
        loop {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = sshd.try_wait().context("checking on sshd")? {
                if self.net.is_none() && log.contains("Address already in use") {
                    return Ok(Ready::PortTaken);
                }
                bail!(
                    "sshd exited ({status}) before accepting connections; {}:\n{log}",
                    log_path.display()
                );
            }
            // The log line proves the listener is this sshd; the connection, that it is
            // reachable from here.
            if log.contains(&listening)
                && (!reachable_here
                    || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
            {
                return Ok(Ready::Listening);
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd did not accept connections on {addr} within {READY_TIMEOUT:?}; {}:\n{log}",
                    log_path.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            registry::warn(&format!("{e:#}"));
        }
    }
}

enum Ready {
    Listening,
    PortTaken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_its_display_form() {
        for mode in [Mode::Auto, Mode::Loopback, Mode::Netns] {
            assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
        }
        assert!("tcp".parse::<Mode>().is_err());
    }
}
