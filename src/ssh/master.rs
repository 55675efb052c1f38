//! The OpenSSH ControlMaster for one alias: found or opened, then shared by every channel
//! sshpyk opens to that host through its mux protocol and every ssh process it starts there. Its lifetime is OpenSSH's (`ControlPersist`), never ours.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use super::config::{last_message, spawn_error, EffectiveConfig};
use super::mux::{MuxChannel, MuxError};
use crate::error::{Error, Result};

/// How long a master we open stays after its last client, when the user's config says nothing.
const DEFAULT_PERSIST: &str = "10m";
/// Seconds between keepalives on a master we open: a dead link is noticed after about 4 of them.
const SERVER_ALIVE_INTERVAL: u64 = 3;
/// How long a connection opened to replace one that stopped answering stays after its last
/// client.
const FRESH_PERSIST: &str = "60";
/// A probe of the host while the link is down ([`Master::reachable_again`]): given up before the
/// kernel's first SYN retransmission (1 s), so that every probe sends a fresh SYN.
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// The most connections one host gets when its server refuses more sessions on each.
const MAX_CONNECTIONS: u32 = 8;

#[derive(Debug, Clone)]
pub(crate) struct Master {
    ssh: String,
    config: PathBuf,
    alias: String,
    /// The ControlPath given to ssh (maybe a pattern with `%C`).
    control_path: String,
    /// Where the master's control socket really is: `control_path` as ssh expands it.
    control_socket: PathBuf,
    /// ControlPersist to open the master with.
    persist: String,
    runtime_dir: PathBuf,
    effective: EffectiveConfig,
    ssh_verbose: bool,
}

impl Master {
    /// Reads the effective config; where it sets no ControlPath, uses a private one in the
    /// 0700 runtime dir.
    pub(crate) async fn for_alias(
        ssh: &str,
        config: &Path,
        alias: &str,
        ssh_verbose: bool,
    ) -> Result<Self> {
        let runtime_dir = crate::runtime::dir()?;
        let private = control_path_option(&runtime_dir.to_string_lossy(), "/cm-%C");
        // Both at once: the second tells where ssh puts our private socket, for when the
        // config names none.
        let with_private = [format!("ControlPath={private}")];
        let (effective, expanded) = tokio::join!(
            EffectiveConfig::query(ssh, config, alias),
            EffectiveConfig::query_with(ssh, config, alias, &with_private),
        );
        let effective = effective?;
        // `ssh -G` prints ControlPath expanded (tokens, `~`).
        let (control_path, control_socket) = match effective.control_path() {
            Some(path) => (control_path_option(path, ""), PathBuf::from(path)),
            None => {
                let expanded = expanded?;
                let socket = expanded.control_path().ok_or_else(|| {
                    Error::Ssh(format!(
                        "`{ssh} -G` reports no ControlPath for '{alias}' where sshpyk set one"
                    ))
                })?;
                (private, PathBuf::from(socket))
            }
        };
        let persist = match effective.get("controlpersist") {
            Some(p) if p != "no" && p != "0" => p.to_string(),
            _ => DEFAULT_PERSIST.to_string(),
        };
        Ok(Master {
            ssh: ssh.to_string(),
            config: config.to_owned(),
            alias: alias.to_string(),
            control_path,
            control_socket,
            persist,
            runtime_dir,
            effective,
            ssh_verbose,
        })
    }

    pub(crate) fn alias(&self) -> &str {
        &self.alias
    }

    /// Resolves once the host, unreachable at first, accepts a TCP connection again: the moment
    /// a lost link is back. Connections tried while it was down wait out their SYN backoff
    /// (1, 2, 4 s...) before they try again; a fresh one started now gets through at once.
    /// Never resolves where ssh does not connect directly (ProxyJump, ProxyCommand: the hop is
    /// not ours to probe) or while the host stays reachable (then a connection, not the link,
    /// is stuck). Each probe only opens and closes a TCP connection to sshd.
    pub(crate) async fn reachable_again(&self) {
        let direct = self.effective.get("proxyjump").is_none()
            && self.effective.get("proxycommand").is_none();
        let address = self.effective.get("hostname").zip(
            self.effective
                .get("port")
                .and_then(|p| p.parse::<u16>().ok()),
        );
        match (address, direct) {
            (Some((host, port)), true) => reachable_again(host, port).await,
            _ => std::future::pending().await,
        }
    }

    /// The ssh client this master is opened with.
    pub(crate) fn ssh_program(&self) -> &str {
        &self.ssh
    }

    /// The master's control socket, for channels opened with the mux protocol ([`super::mux`]).
    pub(crate) fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The ControlPath as ssh takes it in `-o ControlPath=...` (quoted, `%` of literal text
    /// doubled).
    pub(crate) fn control_path(&self) -> &str {
        &self.control_path
    }

    pub(crate) fn effective(&self) -> &EffectiveConfig {
        &self.effective
    }

    /// An ssh command that rides the master (and never becomes one, never prompts).
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ssh);
        cmd.arg("-F").arg(&self.config);
        cmd.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            "ClearAllForwardings=yes",
        ]);
        cmd.arg("-o")
            .arg(format!("ControlPath={}", self.control_path));
        if self.ssh_verbose {
            cmd.arg("-v");
        }
        // Out of our process group: Jupyter's interrupt (SIGINT to our group) is not for them.
        cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
        cmd
    }

    /// Whether a master of ours is up. One of another user's (a ControlPath in a shared dir)
    /// never is: ssh's own client would hand it our sessions.
    pub(crate) async fn is_up(&self) -> bool {
        if let Err(e) = self.check_owner() {
            tracing::warn!("{e}");
            return false;
        }
        let mut cmd = self.command();
        // Channels are opened without any ssh process: at -vvv this check is where ssh's own
        // debug output (config, control socket) shows.
        let stderr = if self.ssh_verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        cmd.args(["-O", "check"])
            .arg(&self.alias)
            .stdout(Stdio::null())
            .stderr(stderr);
        matches!(tokio::time::timeout(Duration::from_secs(5), cmd.status()).await, Ok(Ok(s)) if s.success())
    }

    /// Makes sure a master is up, opening one if needed, before `deadline`.
    pub(crate) async fn ensure(&self, deadline: Instant) -> Result<()> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let _lock = self.lock(deadline, budget).await?;
        self.check_owner()?;
        if self.is_up().await {
            tracing::debug!("reusing the ControlMaster of '{}'", self.alias);
            return Ok(());
        }
        if !self.remove_stale_socket()? {
            // Something listens there: a master that was busy a moment ago, or not ours.
            if self.is_up().await {
                return Ok(());
            }
            return Err(Error::Ssh(format!(
                "the ControlMaster at {} does not answer; close it with `ssh -O exit {}` and try again",
                self.control_socket.display(),
                self.alias
            )));
        }
        self.open(deadline).await
    }

    /// Another connection to the same host, with a control socket of ours named `name` in the
    /// runtime dir that stays `persist` after its last client.
    fn sibling(&self, name: &str, persist: &str) -> Master {
        let socket = self.runtime_dir.join(name);
        Master {
            control_path: control_path_option(&socket.to_string_lossy(), ""),
            control_socket: socket,
            persist: persist.to_string(),
            ..self.clone()
        }
    }

    /// The `n`th extra connection to this host, shared by every launcher, for when the server
    /// refuses one more session on the ones before (sshd's `MaxSessions`). Open it with
    /// [`Master::ensure`].
    pub(crate) fn extra_connection(&self, n: u32) -> Master {
        self.sibling(&format!("cm-{:016x}-{n}", self.host_hash()), &self.persist)
    }

    /// A new connection of this launcher's own, raced against a connection that stopped
    /// answering. It lingers [`FRESH_PERSIST`] after its last client (so it never outlives
    /// the launcher by more, and closes the launcher's channels when the launcher dies).
    pub(crate) async fn open_fresh(&self, deadline: Instant) -> Result<Master> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fresh = self.sibling(&format!("rc-{}-{n}", std::process::id()), FRESH_PERSIST);
        let opened = fresh.open(deadline).await;
        if opened.is_err() {
            // An attempt cut short may leave its socket file behind.
            let _ = std::fs::remove_file(&fresh.control_socket);
        }
        opened.map(|()| fresh)
    }

    /// A session running `command` on the remote through this master's mux protocol, with the
    /// given stdio (no `ssh` process: the master closes it when we drop the channel or die).
    pub(crate) async fn open_session(
        &self,
        command: &str,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<MuxChannel, OpenSessionError> {
        MuxChannel::session(&self.control_socket, command, stdin, stdout, stderr)
            .await
            .map_err(|source| OpenSessionError {
                alias: self.alias.clone(),
                source,
            })
    }

    /// Opens a master at our ControlPath (nothing is there).
    async fn open(&self, deadline: Instant) -> Result<()> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let log = tempfile::Builder::new()
            .prefix("master-")
            .suffix(".log")
            .tempfile_in(&self.runtime_dir)
            .map_err(Error::io("cannot create a log file in the runtime dir"))?;
        let mut cmd = self.open_command(false);
        // The master outlives us on purpose; its output goes to a file so that it never holds
        // our stderr (a parent reading it would wait for the master to exit).
        cmd.arg("-E")
            .arg(log.path())
            .args(["-N", "-f"])
            .arg(&self.alias);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        let status = match tokio::time::timeout_at(deadline, cmd.status()).await {
            Ok(status) => status.map_err(|e| spawn_error(&self.ssh, e))?,
            Err(_) => return Err(self.timeout_error(budget)),
        };
        if status.success() {
            // ssh backgrounds a plain connection when it cannot create the socket: not a master.
            if !self.is_up().await {
                return Err(Error::Ssh(format!(
                    "ssh connected to '{}' but no ControlMaster answers at {}; check that the ControlPath directory is writable",
                    self.alias,
                    self.control_socket.display()
                )));
            }
            tracing::debug!(
                "opened a ControlMaster for '{}' at {}",
                self.alias,
                self.control_socket.display()
            );
            return Ok(());
        }
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        Err(self.classify_failure(&text))
    }

    /// A socket file left by a master that died (SIGKILL, crash, reboot) makes ssh refuse to
    /// create a new one (it would background a plain connection instead): remove it when nothing
    /// listens there. `false` when something does listen.
    /// Refuses a control socket that another user listens on (the mux client checks the same
    /// for the sessions it opens itself). Nothing listening is fine: there is no one to trust.
    pub(super) fn check_owner(&self) -> Result<()> {
        let Ok(stream) = std::os::unix::net::UnixStream::connect(&self.control_socket) else {
            return Ok(());
        };
        let owner =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(|e| {
                    Error::Ssh(format!(
                        "cannot tell who listens on the ControlMaster socket {}: {e}",
                        self.control_socket.display()
                    ))
                })?
                .uid();
        if owner != nix::unistd::getuid().as_raw() {
            return Err(Error::Ssh(format!(
                "the ControlMaster socket {} belongs to uid {owner}, not to us; remove it or fix ControlPath",
                self.control_socket.display()
            )));
        }
        Ok(())
    }

    pub(super) fn remove_stale_socket(&self) -> Result<bool> {
        match std::os::unix::net::UnixStream::connect(&self.control_socket) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::debug!(
                    "removing the stale control socket {}",
                    self.control_socket.display()
                );
                std::fs::remove_file(&self.control_socket).map_err(Error::io(format!(
                    "cannot remove the stale control socket {}",
                    self.control_socket.display()
                )))?;
                Ok(true)
            }
            Err(_) => Ok(true),
        }
    }

    /// The `ssh` command that opens this master (`-N -f`: it backgrounds once authenticated).
    /// `interactive`: it may prompt on the terminal (BatchMode off, whatever the config says).
    pub(super) fn open_command(&self, interactive: bool) -> Command {
        let mut cmd = Command::new(&self.ssh);
        cmd.arg("-F").arg(&self.config);
        if interactive {
            // The first value of an option wins: this one beats the BatchMode=yes below.
            cmd.args(["-o", "BatchMode=no"]);
        }
        cmd.args(self.open_options());
        cmd
    }

    /// The ControlPersist this master is opened with.
    pub(crate) fn persist(&self) -> &str {
        &self.persist
    }

    fn open_options(&self) -> Vec<String> {
        let mut opts = vec![
            "BatchMode=yes".to_string(),
            "ControlMaster=yes".to_string(),
            "ClearAllForwardings=yes".to_string(),
            format!("ControlPath={}", self.control_path),
            format!("ControlPersist={}", self.persist),
        ];
        // A dead link must be noticed soon (the launcher then reconnects) and without any polling
        // of ours. Debian's ssh defaults to 300 s under BatchMode: far too slow for that.
        let interval: u64 = self
            .effective
            .get("serveraliveinterval")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if interval == 0 || interval > SERVER_ALIVE_INTERVAL {
            opts.push(format!("ServerAliveInterval={SERVER_ALIVE_INTERVAL}"));
            opts.push("ServerAliveCountMax=3".into());
        }
        opts.into_iter()
            .flat_map(|o| ["-o".to_string(), o])
            .collect()
    }

    /// The command a user runs once to open the connection by hand (password, OTP, FIDO touch).
    pub(crate) fn connect_hint(&self) -> String {
        super::connect_hint(&self.alias, &self.config, &self.ssh)
    }

    fn timeout_error(&self, budget: Duration) -> Error {
        Error::Timeout {
            what: format!("connecting to '{}' ({})", self.alias, self.host_port()),
            secs: (budget.as_secs_f64() * 10.0).round() / 10.0,
            hint: "check that the host is up and answers ssh, or raise --launch-timeout".into(),
        }
    }

    fn host_port(&self) -> String {
        format!(
            "{}:{}",
            self.effective.get("hostname").unwrap_or(&self.alias),
            self.effective.get("port").unwrap_or("22")
        )
    }

    fn classify_failure(&self, log: &str) -> Error {
        let alias = &self.alias;
        let where_ = self.host_port();
        let reason = last_message(log);
        if log.contains("Permission denied") || log.contains("Too many authentication failures") {
            Error::Ssh(format!(
                "authentication to '{alias}' ({where_}) failed: {reason}; if it needs a human (password, OTP, FIDO touch), run `{}` once, then start again",
                self.connect_hint()
            ))
        } else if log.contains("Host key verification failed") {
            Error::Ssh(format!(
                "the host key of '{alias}' ({where_}) is unknown or changed; connect once by hand with `ssh -F {} {alias}` to check and accept it",
                self.config.display()
            ))
        } else if log.contains("Connection refused") {
            Error::Ssh(format!("ssh host '{alias}' ({where_}) refused the connection; check that sshd runs there and the Port in your ssh config"))
        } else if log.contains("Could not resolve hostname") {
            Error::Ssh(format!("the host name of '{alias}' cannot be resolved: {reason}; fix HostName in your ssh config"))
        } else {
            Error::Ssh(format!("ssh to '{alias}' ({where_}) failed: {reason}"))
        }
    }

    /// Serialises "check, then open" between launchers of the same host: two masters racing for
    /// one ControlPath would leave a stray plain connection behind.
    async fn lock(
        &self,
        deadline: Instant,
        budget: Duration,
    ) -> Result<nix::fcntl::Flock<std::fs::File>> {
        // One lock per host (not per ControlPath), so that lock files do not pile up.
        let path = self
            .runtime_dir
            .join(format!("master-{:016x}.lock", self.host_hash()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(format!("cannot open {}", path.display())))?;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, _)) => file = f,
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(budget));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Master {
    /// Names this host (ssh config and alias) in file names of the runtime dir.
    fn host_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&self.config, &self.alias).hash(&mut hasher);
        hasher.finish()
    }
}

/// A session the master of `alias` did not open ([`Master::open_session`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot open a session to '{alias}' through its ssh connection: {source}")]
pub(crate) struct OpenSessionError {
    alias: String,
    source: MuxError,
}

/// A refusal (sshd's `MaxSessions`) keeps an error of its own: [`retry_on_session_refused`]
/// recovers from it, far from here, on another connection.
impl From<OpenSessionError> for Error {
    fn from(e: OpenSessionError) -> Error {
        let refused = matches!(e.source, MuxError::Refused(_));
        let message = e.to_string();
        if refused {
            Error::SessionRefused(message)
        } else {
            Error::Ssh(message)
        }
    }
}

/// A ControlPath value for `-o`: quoted, since ssh splits option values on spaces, and with the
/// `%` of literal text doubled, since ssh expands tokens again; `tokens` is left to ssh.
fn control_path_option(literal: &str, tokens: &str) -> String {
    format!("\"{}{tokens}\"", literal.replace('%', "%%"))
}

/// Runs `open` (which opens a session) on `master`'s connection; when the server refuses one
/// more session there (sshd's `MaxSessions`: many kernels, or the user's own sessions on a shared
/// ControlPath), runs it again on the host's next connection, opening it if needed. Says so once
/// per process.
pub(crate) async fn retry_on_session_refused<T, F, Fut>(
    master: &Master,
    deadline: Instant,
    mut open: F,
) -> Result<(Master, T)>
where
    F: FnMut(Master) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    static SAID: std::sync::Once = std::sync::Once::new();
    let mut connection = master.clone();
    for n in 1..=MAX_CONNECTIONS {
        match open(connection.clone()).await {
            Err(Error::SessionRefused(reason)) if n < MAX_CONNECTIONS => {
                SAID.call_once(|| {
                    tracing::info!(
                        "'{}' refused one more session on its ssh connection (sshd MaxSessions); using another connection to the host",
                        master.alias()
                    )
                });
                tracing::debug!("{reason}");
                connection = master.extra_connection(n);
                connection.ensure(deadline).await?;
            }
            other => return other.map(|value| (connection, value)),
        }
    }
    unreachable!("the last connection's answer is returned")
}

/// See [`Master::reachable_again`].
async fn reachable_again(host: &str, port: u16) {
    let mut was_down = false;
    loop {
        let probe = tokio::net::TcpStream::connect((host, port));
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) if was_down => return,
            Ok(Ok(_)) => return std::future::pending().await,
            _ => was_down = true,
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(source: MuxError) -> Error {
        Error::from(OpenSessionError {
            alias: "gpu".into(),
            source,
        })
    }

    /// Only a refusal is [`Error::SessionRefused`]; the messages and exit codes are the user's.
    #[test]
    fn mux_errors_map_to_the_exit_code_enum() {
        let prefix = "cannot open a session to 'gpu' through its ssh connection: ";
        let refused = mapped(MuxError::Refused("Session open refused by peer".into()));
        assert!(matches!(refused, Error::SessionRefused(_)), "{refused:?}");
        assert_eq!(
            refused.to_string(),
            format!("{prefix}the ControlMaster could not open the channel: Session open refused by peer")
        );
        assert_eq!(refused.exit_code(), 4);
        let cases = [
            (
                MuxError::Failed("open failed".into()),
                "the ControlMaster could not open the channel: open failed",
            ),
            (
                MuxError::Denied("Permission denied".into()),
                "the ControlMaster refused the channel: Permission denied",
            ),
            (
                MuxError::Protocol("malformed message from the ControlMaster".into()),
                "malformed message from the ControlMaster",
            ),
            (
                MuxError::Unreachable {
                    socket: "/run/cm".into(),
                    source: std::io::Error::other("gone"),
                },
                "cannot reach the ControlMaster at /run/cm: gone",
            ),
            (
                MuxError::NotOurs {
                    socket: "/run/cm".into(),
                    owner: 7,
                },
                "the ControlMaster socket /run/cm belongs to uid 7, not to us; remove it or fix ControlPath",
            ),
            (
                MuxError::Io(std::io::Error::other("broken")),
                "broken",
            ),
        ];
        for (source, said) in cases {
            let e = mapped(source);
            assert!(matches!(e, Error::Ssh(_)), "{e:?}");
            assert_eq!(e.to_string(), format!("{prefix}{said}"));
            assert_eq!(e.exit_code(), 4);
        }
    }

    #[tokio::test]
    async fn a_host_is_reachable_again_when_it_answers_after_it_did_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Up from the start: a stuck connection, not the link; never resolves.
        let up = tokio::time::timeout(
            Duration::from_millis(500),
            reachable_again("127.0.0.1", port),
        );
        assert!(up.await.is_err());
        drop(listener);
        let back = tokio::spawn(async move { reachable_again("127.0.0.1", port).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!back.is_finished(), "resolved while nothing listened");
        let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), back)
            .await
            .expect("resolves once the port answers again")
            .unwrap();
    }
}
