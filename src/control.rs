//! Running kernels are addressable: each launcher owns a control socket in sshpyk's private
//! runtime dir (0700, [`crate::runtime`]), `launch-<pid>.sock`, that answers "what are you"
//! (`sshpyk ps`, `sshpyk mounts list`) and takes live mount requests (`sshpyk mounts add` and
//! `remove`), so that a running kernel changes without a restart.
//!
//! One request per connection: a JSON line each way ([`ControlRequest`], [`ControlReply`]). Only our own uid
//! reaches the socket (the directory is 0700; the peer's credentials are checked too). A socket
//! left by a SIGKILLed launcher is found dead (nothing accepts) and removed by the next reader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::mounts::cloud_on_remote::CloudMount;
use crate::mounts::local_on_remote::MountSpec;
use crate::slurm::Placement;

const PREFIX: &str = "launch-";
const SUFFIX: &str = ".sock";
/// The longest request line accepted (a mount spec is small).
const MAX_LINE: u64 = 1 << 20;
/// After a failed accept, the wait before the next one: doubled on each failure in a row.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a running launcher gets to say what it is (`sshpyk ps`, `sshpyk mounts`).
pub(crate) const DESCRIBE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ControlRequest {
    /// Answered with [`ControlReply::Status`].
    Describe,
    /// Mount `mount` now (its secrets are read from sshpyk's secrets dir by the launcher).
    AddCloudMount { mount: CloudMount },
    /// Unmount every mount (of any kind) at the remote path.
    RemoveMount { remote: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum ControlReply {
    Status(KernelStatus),
    Done { message: String },
    Failed { message: String },
}

/// What a running launcher says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KernelStatus {
    /// The kernelspec's name.
    pub(crate) kernel_name: String,
    pub(crate) kernelspec_dir: PathBuf,
    pub(crate) ssh_host_alias: String,
    /// The remote's hostname.
    pub(crate) hostname: String,
    pub(crate) remote_pid: u32,
    pub(crate) launcher_pid: u32,
    /// Seconds since the Unix epoch when the kernel became ready.
    pub(crate) started: u64,
    pub(crate) state: KernelState,
    /// Seconds since the Unix epoch when the connection went down; `None` (null) while up.
    #[serde(default)]
    pub(crate) down_since: Option<u64>,
    /// The Slurm job and node of a Slurm kernel; `None` (null) for others.
    #[serde(default)]
    pub(crate) slurm: Option<Placement>,
    pub(crate) mounts: Vec<MountStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KernelState {
    Running,
    Reconnecting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MountStatus {
    pub(crate) remote: String,
    pub(crate) kind: MountKind,
    /// The local directory, or `backend:path`.
    pub(crate) source: String,
    pub(crate) read_only: bool,
    pub(crate) state: MountState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// What a synced copy is doing: bytes to sync, conflicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

impl MountStatus {
    /// A local directory on the remote; `detail`: what its synced copy is doing.
    pub(crate) fn local(
        spec: &MountSpec,
        state: MountState,
        detail: Option<String>,
    ) -> MountStatus {
        MountStatus {
            remote: spec.remote.clone(),
            kind: MountKind::LocalOnRemote,
            source: spec.local.clone(),
            read_only: spec.read_only(),
            state,
            error: None,
            detail,
        }
    }

    /// A cloud store on the remote; `detail`: its uploads still pending.
    pub(crate) fn cloud(
        mount: &CloudMount,
        state: MountState,
        error: Option<String>,
        detail: Option<String>,
    ) -> MountStatus {
        MountStatus {
            remote: mount.remote.clone(),
            kind: MountKind::Cloud,
            source: mount.describe(),
            read_only: !mount.rw,
            state,
            error,
            detail,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MountKind {
    /// A local directory on the remote (`--mount-local-on-remote`).
    LocalOnRemote,
    /// Cloud storage on the remote (`mounts add --backend`).
    Cloud,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MountState {
    /// In the kernelspec; no running kernel to ask.
    Configured,
    Mounted,
    Failing,
    /// The launcher is reconnecting and cannot ask the remote now.
    Unknown,
}

impl std::fmt::Display for MountState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountState::Configured => "configured",
            MountState::Mounted => "mounted",
            MountState::Failing => "failing",
            MountState::Unknown => "unknown",
        })
    }
}

impl std::fmt::Display for KernelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelState::Running => "running",
            KernelState::Reconnecting => "reconnecting",
        })
    }
}

/// A request taken from the socket, and where its reply goes.
pub(crate) struct Call {
    pub(crate) request: ControlRequest,
    pub(crate) reply: oneshot::Sender<ControlReply>,
}

/// The launcher's end: the socket, removed when dropped.
pub(crate) struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
    calls: mpsc::Receiver<Call>,
}

impl ControlServer {
    /// Listens on `launch-<our pid>.sock` in the runtime dir. A failure is not fatal to the
    /// kernel: it only makes it invisible to `ps` and live mounts, which the caller logs.
    pub(crate) fn bind() -> Result<ControlServer> {
        let path = crate::runtime::dir()?.join(format!("{PREFIX}{}{SUFFIX}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(Error::io(format!("cannot listen on {}", path.display())))?;
        let (tx, calls) = mpsc::channel(8);
        let task = tokio::spawn(accept(listener, tx));
        Ok(ControlServer { path, task, calls })
    }

    /// The next request. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Call> {
        self.calls.recv().await
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let me = nix::unistd::getuid().as_raw();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE (another local user can hold many connections to our ports): ending
                // here would make the kernel vanish from `ps`, which then deletes our socket.
                tracing::warn!("control socket: accept failed: {e}; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF_MIN;
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
            continue;
        }
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, calls).await {
                tracing::debug!("control request: {e}");
            }
        });
    }
}

async fn serve(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = tokio::io::AsyncReadExt::take(BufReader::new(read), MAX_LINE);
    read.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<ControlRequest>(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if calls.send(Call { request, reply: tx }).await.is_err() {
                return Ok(());
            }
            // A client that hangs up (gave up waiting, Ctrl+C) drops the reply's receiver, so
            // the launcher knows nobody takes the answer.
            let gone = async {
                let mut rest = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut rest).await;
            };
            tokio::select! {
                reply = rx => match reply {
                    Ok(reply) => reply,
                    Err(_) => ControlReply::Failed {
                        message: "the launcher is stopping".into(),
                    },
                },
                () = gone => return Ok(()),
            }
        }
        Err(e) => ControlReply::Failed {
            message: format!(
                "not a request this sshpyk knows ({e}); is the launcher of another version?"
            ),
        },
    };
    let mut text = serde_json::to_string(&reply).expect("replies serialize");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// A running launcher's socket, by its pid.
pub(crate) struct Launcher {
    pub(crate) pid: u32,
    pub(crate) path: PathBuf,
}

/// Every launcher socket in the runtime dir, sockets of dead launchers removed.
pub(crate) fn launchers() -> Result<Vec<Launcher>> {
    let dir = crate::runtime::dir()?;
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(&dir).map_err(Error::io(format!("cannot read {}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if std::os::unix::net::UnixStream::connect(&path).is_err() {
            // Nothing accepts: its launcher is gone (SIGKILL leaves the file).
            let _ = std::fs::remove_file(&path);
            continue;
        }
        found.push(Launcher { pid, path });
    }
    found.sort_by_key(|l| l.pid);
    Ok(found)
}

/// Sends one request and waits up to `wait` for the reply.
pub(crate) async fn ask(
    socket: &Path,
    request: &ControlRequest,
    wait: Duration,
) -> Result<ControlReply> {
    let talk = async {
        let stream = UnixStream::connect(socket).await?;
        let (read, mut write) = stream.into_split();
        let mut text = serde_json::to_string(request).expect("requests serialize");
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(wait, talk)
        .await
        .map_err(|_| {
            Error::Local(format!(
                "the launcher at {} did not answer within {} s",
                socket.display(),
                wait.as_secs()
            ))
        })?
        .map_err(Error::io(format!("cannot talk to {}", socket.display())))?;
    serde_json::from_str(&line).map_err(|e| {
        Error::Local(format!(
            "the launcher at {} answered what this sshpyk cannot read ({e})",
            socket.display()
        ))
    })
}

/// The status of every running launcher (those that answer within `wait`).
pub(crate) async fn running(wait: Duration) -> Result<Vec<(Launcher, KernelStatus)>> {
    let mut out = Vec::new();
    for launcher in launchers()? {
        match ask(&launcher.path, &ControlRequest::Describe, wait).await {
            Ok(ControlReply::Status(status)) => out.push((launcher, status)),
            Ok(other) => tracing::warn!("launcher {}: unexpected reply {other:?}", launcher.pid),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(out)
}
