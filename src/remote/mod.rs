//! The remote side of a kernel: one ssh session that carries the supervisor (a Python script
//! embedded here), the session key, commands and the kernel's exit, in a single round trip.

use std::collections::HashMap;
use std::os::fd::AsFd;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;

use crate::connection::{Channel, ConnectionInfo};
use crate::error::{Error, Result};
use crate::ssh::mux::MuxChannel;
use crate::ssh::Master;

pub mod probe;

const SUPERVISOR: &str = include_str!("supervisor.py");

/// Runs the remote python with the given arguments, from the remote login shell's command line:
/// nothing secret goes there, only the interpreter path and code. (The supervisor cannot be piped
/// to `sh -s` instead: dash reads its script in blocks, so it would swallow the supervisor and
/// key meant for python, and handing them over costs one more round trip.)
const RUN_PYTHON: &str = r#"py=$1; shift
case $py in "~/"*) py=$HOME/${py#"~/"};; esac
if [ ! -x "$py" ]; then echo sshpyk-no-python; exit 0; fi
exec "$py" "$@""#;

/// Reads the supervisor's length-prefixed source from stdin and runs it.
const LOADER: &str = "import sys;n=int(sys.stdin.buffer.readline());exec(compile(sys.stdin.buffer.read(n),'sshpyk-supervisor','exec'))";

/// Connects stdin/stdout to a Unix socket on the remote (OpenSSH 9.2's `ssh -W` cannot reach
/// Unix sockets, so a few lines of python relay the bytes). Exits with `RELAY_GONE` when nothing
/// listens there.
const RELAY: &str = r#"# sshpyk-relay
import os, socket, sys, threading
GONE = 3
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except (FileNotFoundError, ConnectionRefusedError):
    sys.exit(GONE)
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)"#;

const RELAY_GONE: u32 = 3;

/// The remote command line that runs `python args...`.
fn python_command(python: &str, args: &[&str]) -> String {
    let mut words = vec![python];
    words.extend_from_slice(args);
    sh_command(RUN_PYTHON, &words)
}

/// Runs a POSIX sh `script` with `args` on the remote over the master, and collects its output.
pub async fn run_sh(master: &Master, script: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = master.command();
    cmd.arg("-T")
        .arg(master.alias())
        .arg(sh_command(script, args));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.output()
        .await
        .map_err(|e| crate::ssh::config::spawn_error("ssh", e))
}

/// A remote command line running a POSIX sh `script` with `args` as `$1...`, whatever the
/// remote login shell: every word quoted.
pub fn sh_command(script: &str, args: &[&str]) -> String {
    let mut line = format!("exec sh -c {} sshpyk", shell_quote(script));
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    line
}

/// Where a kernel channel listens on the remote host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Endpoint {
    /// A port on the remote loopback, reached with a stdio forward through the master.
    Tcp(u16),
    /// A Unix socket in the 0700 run dir, reached through a relay.
    Ipc(String),
}

/// The remote command line that connects its stdin/stdout to the Unix socket at `path` (an ipc
/// endpoint, or the supervisor's socket). It exits with `RELAY_GONE` when nothing listens there.
pub fn relay_command(remote_python: &str, path: &str) -> String {
    python_command(remote_python, &["-S", "-c", RELAY, path])
}

/// What the supervisor reports once the kernel's sockets are up.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub hostname: String,
    pub transport: String,
    /// The kernel's ports on the remote loopback.
    pub endpoints: HashMap<Channel, Endpoint>,
    pub run_dir: String,
    pub interrupt_mode: String,
    #[serde(default)]
    pub language: String,
}

/// How the remote kernel ended.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Exit {
    pub status: Option<i32>,
    pub signal: Option<i32>,
    #[serde(default)]
    pub tail: Vec<String>,
    /// Set when the supervisor ended the kernel: "orphaned" (its lease ran out) or "killed".
    #[serde(default)]
    pub reason: Option<String>,
}

impl Exit {
    /// The launcher's own exit status: the kernel's, or 128+signal as a shell reports it.
    pub fn code(&self) -> i32 {
        match (self.status, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        }
    }

    pub fn describe(&self) -> String {
        match (self.status, self.signal) {
            (Some(0), _) => "exited normally".into(),
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "ended".into(),
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Exited(Exit),
    /// The session ended without an exit report: the connection (or the supervisor) is gone.
    Lost,
}

pub struct StartRequest<'a> {
    pub remote_python: &'a str,
    pub kernel_name: &'a str,
    pub info: &'a ConnectionInfo,
    pub orphan_timeout: f64,
    /// How often the launcher renews the lease.
    pub ping_interval: std::time::Duration,
}

/// The open session with the remote supervisor, a channel of the master. Dropping it closes
/// the channel (so does the kernel when the launcher dies, even by SIGKILL), which ends the
/// lease: the supervisor then starts its orphan countdown (or, before `arm`, kills the kernel at
/// once).
pub struct Session {
    channel: MuxChannel,
    stdin: pipe::Sender,
    lines: Lines<BufReader<pipe::Receiver>>,
}

impl Session {
    /// One session over the master running `remote_command`: its stdin and stdout are pipes to
    /// us, its stderr is ours.
    async fn spawn(master: &Master, remote_command: &str) -> Result<Session> {
        let local = |e: std::io::Error| Error::Local(format!("cannot set up a session: {e}"));
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| local(e.into()));
        let (stdin_remote, stdin_local) = pipe()?;
        let (stdout_local, stdout_remote) = pipe()?;
        // Our stderr, so that what the remote side prints there reaches the launcher's log
        // (or nowhere, when we have none).
        let stderr = match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => std::fs::File::open("/dev/null").map_err(local)?.into(),
        };
        let stdin = pipe::Sender::from_owned_fd(stdin_local).map_err(local)?;
        let stdout = pipe::Receiver::from_owned_fd(stdout_local).map_err(local)?;
        let channel = MuxChannel::session(
            master.control_socket(),
            remote_command,
            stdin_remote,
            stdout_remote,
            stderr,
        )
        .await
        .map_err(|e| {
            Error::Ssh(format!(
                "cannot open a session to '{}' through its ssh connection: {e}",
                master.alias()
            ))
        })?;
        Ok(Session {
            channel,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub async fn start(master: &Master, req: &StartRequest<'_>) -> Result<(Session, Ready)> {
        let mut session = Session::spawn(
            master,
            &python_command(req.remote_python, &["-u", "-c", LOADER]),
        )
        .await?;
        // Source, then the config line holding the key: both through stdin, never argv.
        let config = json!({
            "key": req.info.key,
            "signature_scheme": req.info.signature_scheme,
            "kernel_name": req.kernel_name,
            "orphan_timeout": req.orphan_timeout,
            "ping_interval": req.ping_interval.as_secs_f64(),
        });
        let mut payload = format!("{}\n{SUPERVISOR}", SUPERVISOR.len()).into_bytes();
        payload.extend_from_slice(config.to_string().as_bytes());
        payload.push(b'\n');
        session.stdin.write_all(&payload).await.map_err(|e| {
            Error::Ssh(format!(
                "the ssh session to '{}' closed: {e}",
                master.alias()
            ))
        })?;
        let ready = session.read_ready(master.alias(), req).await?;
        Ok((session, ready))
    }

    async fn read_ready(&mut self, alias: &str, req: &StartRequest<'_>) -> Result<Ready> {
        loop {
            let Some(line) = self.next_line().await else {
                return Err(Error::Ssh(match self.channel.exit_status().await {
                    Ok(Some(status)) => format!("the remote side of '{alias}' ended before the kernel started (status {status}); see the messages above, or run with -vv for details"),
                    Ok(None) | Err(_) => format!("the ssh connection to '{alias}' was lost while starting the kernel"),
                }));
            };
            if line == "sshpyk-no-python" {
                return Err(Error::Remote(format!(
                    "remote python '{}' does not exist on '{alias}'; fix --remote-python-prefix/--remote-python with `sshpyk edit`",
                    req.remote_python
                )));
            }
            let Some(msg) = parse_message(&line) else {
                continue;
            };
            match msg["sshpyk"].as_str() {
                Some("ready") => {
                    return serde_json::from_value(msg).map_err(|e| {
                        Error::Remote(format!("unexpected answer from the remote supervisor: {e}"))
                    })
                }
                Some("error") => {
                    return Err(Error::Remote(format!(
                        "on '{alias}': {}",
                        msg["message"].as_str().unwrap_or("unknown error")
                    )))
                }
                Some("exited") => {
                    let exit: Exit = serde_json::from_value(msg).unwrap_or_default();
                    return Err(Error::Remote(format!(
                        "remote kernel '{}' {} before it was ready: {}",
                        req.kernel_name,
                        exit.describe(),
                        exit.tail.join(" | ")
                    )));
                }
                _ => continue,
            }
        }
    }

    /// The next supervisor line, skipping what login scripts may print.
    async fn next_line(&mut self) -> Option<String> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) if line.starts_with("{\"sshpyk\": \"output\"") => {
                    // The kernel's own stdout/stderr, as a local kernel's would show.
                    if let Some(text) =
                        parse_message(&line).and_then(|m| m["text"].as_str().map(String::from))
                    {
                        eprint!("{text}");
                    }
                }
                Ok(Some(line)) if line.starts_with("{\"sshpyk\"") || line == "sshpyk-no-python" => {
                    return Some(line)
                }
                Ok(Some(line)) => tracing::debug!("remote: {line}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Re-attaches to the supervisor of a kernel started earlier (after the connection was lost).
    /// `Ok(None)`: the supervisor is gone, and with it the kernel.
    pub async fn attach(
        master: &Master,
        remote_python: &str,
        run_dir: &str,
    ) -> Result<Option<Session>> {
        let socket = format!("{run_dir}/supervisor.sock");
        let mut session = Session::spawn(
            master,
            &python_command(remote_python, &["-u", "-c", RELAY, &socket]),
        )
        .await?;
        if let Some(msg) = session.next_line().await.as_deref().and_then(parse_message) {
            if msg["sshpyk"] == "attached" {
                return Ok(Some(session));
            }
        }
        match session.channel.exit_status().await {
            Ok(Some(RELAY_GONE)) => Ok(None),
            _ => Err(Error::Ssh(format!(
                "could not reach the remote supervisor on '{}' again",
                master.alias()
            ))),
        }
    }

    /// Renews the lease.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(json!({"op": "ping"})).await
    }

    /// From now on a lost session means "launcher gone": the supervisor waits out the orphan
    /// timeout instead of killing the kernel at once.
    pub async fn arm(&mut self) -> Result<()> {
        self.send(json!({"op": "arm"})).await
    }

    pub async fn signal(&mut self, signal: &str) -> Result<()> {
        self.send(json!({"op": "signal", "signal": signal})).await
    }

    pub async fn kill(&mut self) -> Result<()> {
        self.send(json!({"op": "kill"})).await
    }

    async fn send(&mut self, msg: serde_json::Value) -> Result<()> {
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        self.stdin.write_all(&line).await.map_err(|e| {
            Error::Ssh(format!(
                "the session with the remote supervisor is gone: {e}"
            ))
        })
    }

    /// Waits for the next thing the supervisor has to say. Cancel-safe.
    pub async fn next_event(&mut self) -> Event {
        while let Some(line) = self.next_line().await {
            if let Some(msg) = parse_message(&line) {
                if msg["sshpyk"] == "exited" {
                    if let Ok(exit) = serde_json::from_value(msg) {
                        return Event::Exited(exit);
                    }
                }
            }
        }
        Event::Lost
    }
}

fn parse_message(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .filter(|m| m.get("sshpyk").is_some())
}

/// Quotes one word for a POSIX shell (the remote login shell parses the command line).
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r#"'\''"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("a 'b' $HOME \"c\"")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "a 'b' $HOME \"c\"");
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(
            Exit {
                status: Some(0),
                ..Default::default()
            }
            .code(),
            0
        );
        assert_eq!(
            Exit {
                signal: Some(9),
                ..Default::default()
            }
            .code(),
            137
        );
    }
}
