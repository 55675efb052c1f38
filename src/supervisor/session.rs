//! The session with the remote supervisor: opened through the master's mux protocol (no `ssh`
//! process), it runs the supervisor, then carries frames both ways ([`super::link`]).
//!
//! Dropping a [`SupervisorSession`] closes its mux control connection, and the master then closes the
//! channel (so does the kernel for a SIGKILLed launcher): the supervisor sees the end of the
//! session while the connection's sshd lives on, and ends the kernel.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::link::{self, Link, WireTasks};
use super::protocol::{
    CloudMountRequest, CloudReport, Exit, Frame, LauncherNotice, Ready, Report, SupervisorNotice,
    SupervisorRequest, MARKER,
};
use crate::bounded;
use crate::error::{Error, Result};
use crate::jupyter::connection::ConnectionInfo;
use crate::settings::Settings;
use crate::slurm::{self, Allocation};
use crate::ssh::init::python_command;
use crate::ssh::init::InitWatch;
use crate::ssh::mux::MuxChannel;
use crate::ssh::Master;

/// The supervisor's source: definitions only (its cloud mounts, the frames of its session, the
/// kernel's start), then the supervisor, which runs.
const SUPERVISOR: &str = concat!(
    include_str!("cloud.py"),
    include_str!("frames.py"),
    include_str!("kernel.py"),
    include_str!("supervisor.py")
);
#[cfg(target_os = "linux")]
const PIPE_SIZE: i32 = 1 << 20;

/// Reads the supervisor's source from stdin and runs it.
const LOADER: &str = include_str!("loader.py");

/// Hands a new session over to a running supervisor.
const ATTACH: &str = include_str!("attach.py");

const GONE: u32 = 3;
/// What the login shell may print before the supervisor's marker (banners, notices).
const BEFORE_MARKER: usize = 16 << 20;

#[derive(Debug)]
pub(crate) enum SessionEvent {
    Exited(Exit),
    /// The session ended without an exit report: the connection (or the supervisor) is gone.
    Lost,
}

/// What a start needs besides the kernel's settings (python, init snippet, environment,
/// working directory, kernel name and timeouts are read from them).
pub(crate) struct StartRequest<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) info: &'a ConnectionInfo,
    /// Run on a Slurm compute node: the allocation, reached through the login node.
    pub(crate) slurm: Option<&'a Allocation>,
    /// How often the launcher renews the lease.
    pub(crate) ping_interval: Duration,
    /// Mounted by the supervisor before the kernel starts.
    pub(crate) cloud_mounts: &'a [CloudMountRequest],
}

/// Where a new session reaches a running kernel's supervisor again: `attach.py`, run by
/// `python`, hands it to the Unix socket `socket` (the supervisor's own, or on Slurm the relay's
/// on the login node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachPoint {
    pub(crate) python: String,
    pub(crate) socket: String,
}

pub(crate) struct SupervisorSession {
    channel: MuxChannel,
    /// The streams, which outlive this session.
    link: Link,
    wire: WireTasks,
    pinger: Option<JoinHandle<()>>,
    /// Where answers to cloud requests go ([`SupervisorSession::forward_cloud_reports`]).
    cloud_reports: Option<mpsc::UnboundedSender<CloudReport>>,
    /// The Slurm job and node the supervisor runs in (a Slurm kernel's session is its step).
    slurm: Option<slurm::Placement>,
    /// The Slurm relay that holds the step, on the login node.
    relay: Option<slurm::Relay>,
}

impl Drop for SupervisorSession {
    fn drop(&mut self) {
        if let Some(pinger) = &self.pinger {
            pinger.abort();
        }
    }
}

/// A session whose frames have begun.
struct Framed {
    channel: MuxChannel,
    from_remote: BufReader<pipe::Receiver>,
    to_remote: pipe::Sender,
}

/// What a new session said before its frames began.
enum Opened {
    Framed(Framed),
    /// The remote python does not exist.
    NoPython,
    /// It ended before the marker, with the remote command's exit status (if any).
    Ended(Option<u32>),
    /// What ran before the supervisor failed (the init snippet, the Slurm allocation).
    Failed(Error),
}

impl SupervisorSession {
    /// One session over the master running `remote_command`, fed `preface` on stdin at once;
    /// what it prints on stderr (login scripts, the kernel) goes to the launcher's log.
    async fn open(
        master: &Master,
        remote_command: &str,
        preface: &[u8],
        mut slurm: Option<&mut slurm::Watch>,
    ) -> Result<Opened> {
        let (stdin_remote, stdin_local) = crate::ssh::pipe()?;
        let (stdout_local, stdout_remote) = crate::ssh::pipe()?;
        for end in [&stdin_local, &stdout_local] {
            // Bigger pipes, fewer wake-ups of the master and of us per MB of output (the
            // default is 64 KiB; Linux lets anyone go to 1 MiB). Best effort.
            #[cfg(target_os = "linux")]
            let _ = nix::fcntl::fcntl(end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        }
        let stderr = relay_stderr()?;
        let mut stdin =
            pipe::Sender::from_owned_fd(stdin_local).map_err(crate::ssh::setup_error)?;
        let stdout =
            pipe::Receiver::from_owned_fd(stdout_local).map_err(crate::ssh::setup_error)?;
        let mut channel = master
            .open_session(remote_command, stdin_remote, stdout_remote, stderr)
            .await?;
        let lost = |e: std::io::Error| {
            Error::Ssh(format!(
                "the ssh session to '{}' closed: {e}",
                master.alias()
            ))
        };
        stdin.write_all(preface).await.map_err(lost)?;
        // Whatever the login shell prints comes before the marker; none of it is ours.
        let mut from_remote = BufReader::with_capacity(256 * 1024, stdout);
        let mut line = Vec::new();
        let mut init = InitWatch::default();
        let mut before_marker = 0;
        loop {
            line.clear();
            let n = bounded::read_line(&mut from_remote, &mut line, bounded::MAX_LINE)
                .await
                .map_err(lost)?;
            before_marker += n;
            if before_marker > BEFORE_MARKER {
                return Ok(Opened::Failed(Error::Remote(format!(
                    "the login shell on '{}' printed more than {} MiB before sshpyk's supervisor started; make its startup files quiet for non-interactive shells",
                    master.alias(),
                    BEFORE_MARKER >> 20
                ))));
            }
            if n == 0 {
                let status = channel.exit_status().await.ok().flatten();
                return Ok(match init.ended(status) {
                    Some(failure) => Opened::Failed(failure.error(master.alias())),
                    None => Opened::Ended(status),
                });
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if let Some(failure) = init.line(text) {
                return Ok(Opened::Failed(failure.error(master.alias())));
            }
            if let (Some(watch), Some(event)) =
                (slurm.as_deref_mut(), slurm::SlurmEvent::parse(text))
            {
                if let Err(e) = watch.on(event, master.alias()) {
                    return Ok(Opened::Failed(e));
                }
                continue;
            }
            match text {
                MARKER => break,
                "sshpyk-no-python" => return Ok(Opened::NoPython),
                "" => {}
                other => tracing::debug!("remote: {other}"),
            }
        }
        Ok(Opened::Framed(Framed {
            channel,
            from_remote,
            to_remote: stdin,
        }))
    }

    fn new(channel: MuxChannel, link: Link, wire: WireTasks) -> SupervisorSession {
        SupervisorSession {
            channel,
            link,
            wire,
            pinger: None,
            cloud_reports: None,
            slurm: None,
            relay: None,
        }
    }

    /// Starts the supervisor and the kernel: one round trip (on a Slurm node: once the job runs).
    /// A Slurm job this start submitted is cancelled when it fails.
    pub(crate) async fn start(
        master: &Master,
        req: &StartRequest<'_>,
    ) -> Result<(SupervisorSession, Ready)> {
        let mut watch = slurm::Watch::default();
        let started = SupervisorSession::start_watched(master, req, &mut watch).await;
        if let (Err(_), Some(job)) = (&started, &watch.submitted) {
            slurm::cancel(master, job).await;
        }
        started
    }

    async fn start_watched(
        master: &Master,
        req: &StartRequest<'_>,
        watch: &mut slurm::Watch,
    ) -> Result<(SupervisorSession, Ready)> {
        let alias = master.alias();
        let settings = req.settings;
        let mut preface = format!("{:012}{SUPERVISOR}", SUPERVISOR.len()).into_bytes();
        // The key travels in this first frame, through stdin: never argv.
        let link = Link::new();
        let start = SupervisorRequest::Start {
            key: req.info.key.clone(),
            signature_scheme: req.info.signature_scheme.clone(),
            kernel_name: settings.remote_kernel_name.clone(),
            orphan_timeout: settings.orphan_timeout,
            ping_interval: req.ping_interval.as_secs_f64(),
            env: settings.remote_env.clone(),
            cwd: settings.remote_cwd.clone(),
            cloud_mounts: req.cloud_mounts.to_vec(),
            window: super::protocol::WINDOW,
            outage_bound: super::protocol::OUTAGE_BOUND,
            upload_wait: settings.shutdown_timeout,
        };
        preface.extend(link.first_request(&start));
        let python = &settings.remote_python;
        let mut command = python_command(
            python,
            &["-u", "-c", LOADER],
            settings.remote_init.as_deref(),
        );
        if let Some(allocation) = req.slurm {
            command = allocation.command(&command, python);
        }
        let slurm_watch = req.slurm.map(|_| &mut *watch);
        let mut session = match SupervisorSession::open(master, &command, &preface, slurm_watch).await? {
            Opened::Framed(f) => {
                let wire = link.connect(f.from_remote, f.to_remote);
                SupervisorSession::new(f.channel, link, wire)
            }
            Opened::NoPython => {
                return Err(Error::Remote(format!(
                    "remote python '{}' does not exist on '{alias}'; fix --remote-python-prefix/--remote-python with `sshpyk edit`",
                    python
                )))
            }
            Opened::Ended(status) => return Err(ended_early(alias, status)),
            Opened::Failed(e) => return Err(e),
        };
        session.slurm = watch.placement.clone();
        session.relay = watch.relay.clone();
        loop {
            match session.next_report().await {
                Some(Report::Ready(ready)) => return Ok((session, ready)),
                Some(Report::Error { message }) => {
                    return Err(Error::Remote(format!("on '{alias}': {message}")))
                }
                Some(Report::Exited(exit)) => {
                    return Err(Error::Remote(format!(
                        "remote kernel '{}' {} before it was ready: {}",
                        settings.remote_kernel_name,
                        exit.describe(),
                        exit.tail.join(" | ")
                    )))
                }
                Some(_) => continue,
                None => {
                    let status = session.channel.exit_status().await.ok().flatten();
                    return Err(ended_early(alias, status));
                }
            }
        }
    }

    /// Re-attaches to the supervisor of a kernel started earlier (after the connection was lost)
    /// at `at`, and resumes `link`'s streams over the new session. `Ok(None)`: the supervisor is
    /// gone, and with it the kernel.
    pub(crate) async fn attach(
        master: &Master,
        at: &AttachPoint,
        link: &Link,
        ping_interval: Duration,
    ) -> Result<Option<SupervisorSession>> {
        let command = python_command(&at.python, &["-S", "-c", ATTACH, &at.socket], None);
        let unreachable = || {
            Error::Ssh(format!(
                "could not reach the remote supervisor on '{}' again",
                master.alias()
            ))
        };
        let mut framed = match SupervisorSession::open(master, &command, b"", None).await? {
            Opened::Framed(framed) => framed,
            Opened::Ended(Some(GONE)) => return Ok(None),
            Opened::Ended(_) | Opened::NoPython | Opened::Failed(_) => return Err(unreachable()),
        };
        // The supervisor's first frame says how far it received; the streams resume from there.
        let notice = match link::next_frame(&mut framed.from_remote).await {
            Ok(Some(Frame::Notice(json))) => serde_json::from_slice::<SupervisorNotice>(&json).ok(),
            Ok(Some(Frame::Message(json))) => {
                if let Ok(Report::Exited(exit)) = serde_json::from_slice(&json) {
                    // It ended just as we came back; the caller hears it as the next event.
                    tracing::debug!("the remote kernel {} as we reattached", exit.describe());
                }
                None
            }
            _ => None,
        };
        let Some(SupervisorNotice::Attached {
            pid,
            received,
            last_open,
        }) = notice
        else {
            return Err(unreachable());
        };
        tracing::debug!("reattached to the supervisor (pid {pid})");
        let wire = link
            .resume(framed.from_remote, framed.to_remote, &received, last_open)
            .map_err(|violation| Error::Ssh(format!("{violation}; reattaching failed")))?;
        let mut session = SupervisorSession::new(framed.channel, link.clone(), wire);
        session.keep_alive(ping_interval);
        Ok(Some(session))
    }

    /// The Slurm job and node this session's supervisor runs in; `None` off Slurm.
    pub(crate) fn slurm(&self) -> Option<&slurm::Placement> {
        self.slurm.as_ref()
    }

    /// Where a new session reaches this session's supervisor again: through the Slurm relay
    /// that holds its step, or at the supervisor's own socket in its own interpreter (`ready`
    /// names both; no init snippet needed), else `python`, the kernel's setting.
    pub(crate) fn attach_point(&self, ready: &Ready, python: &str) -> AttachPoint {
        match &self.relay {
            Some(relay) => AttachPoint {
                python: relay.python.clone(),
                socket: relay.socket.clone(),
            },
            None => AttachPoint {
                python: match ready.python.as_str() {
                    "" => python.to_string(),
                    own => own.to_string(),
                },
                socket: format!("{}/supervisor.sock", ready.run_dir),
            },
        }
    }

    /// This session reattached to the kernel that `old` started: it takes over where that
    /// kernel runs (its Slurm job and node) and the relay the next reattach goes through.
    pub(crate) fn inherit_placement(&mut self, old: &SupervisorSession) {
        self.slurm = old.slurm.clone();
        self.relay = old.relay.clone();
    }

    /// The handle that client connections ride on.
    pub(crate) fn link(&self) -> Link {
        self.link.clone()
    }

    /// From now on a lost session means "launcher gone" or "connection gone" (not "start
    /// abandoned"); and the lease is renewed every `ping_interval` from a task of its own, so
    /// that nothing the launcher does in the meantime (a remount, an interrupt) lets it lapse.
    pub(crate) fn arm(&mut self, ping_interval: Duration) {
        self.request(&SupervisorRequest::Arm);
        self.keep_alive(ping_interval);
    }

    fn keep_alive(&mut self, ping_interval: Duration) {
        let link = self.link.clone();
        self.pinger = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ping_interval);
            loop {
                tick.tick().await;
                link.notice(&LauncherNotice::Ping);
            }
        }));
    }

    /// Sends a request now, or with the next session if this one is lost.
    pub(crate) fn request(&self, request: &SupervisorRequest) {
        self.link.request(request)
    }

    /// The next report; `None` once this session's frames end. Cancel-safe.
    async fn next_report(&mut self) -> Option<Report> {
        tokio::select! {
            biased;
            report = self.link.next_report() => report,
            _ = self.wire.ended() => None,
        }
    }

    /// Answers to cloud requests go to `to` from now on (they arrive while [`SupervisorSession::next_event`]
    /// waits).
    pub(crate) fn forward_cloud_reports(&mut self, to: mpsc::UnboundedSender<CloudReport>) {
        self.cloud_reports = Some(to);
    }

    /// Waits for the kernel's exit or the end of the session. Cancel-safe.
    pub(crate) async fn next_event(&mut self) -> SessionEvent {
        while let Some(report) = self.next_report().await {
            match report {
                Report::Exited(exit) => return SessionEvent::Exited(exit),
                Report::Cloud(report) => {
                    if let Some(to) = &self.cloud_reports {
                        let _ = to.send(report);
                    }
                }
                Report::Dropped { channel, bytes } => tracing::warn!(
                    "while the connection was down, the kernel sent more on its {channel} channel than the remote keeps ({} MiB per kernel): that connection was closed and {bytes} bytes dropped; its client reconnects",
                    crate::supervisor::protocol::OUTAGE_BOUND >> 20
                ),
                Report::Ready(_) | Report::Error { .. } => {}
            }
        }
        SessionEvent::Lost
    }
}

fn ended_early(alias: &str, status: Option<u32>) -> Error {
    Error::Ssh(match status {
        Some(status) => format!("the remote side of '{alias}' ended before the kernel started (status {status}); see the messages above, or run with -vv for details"),
        None => format!("the ssh connection to '{alias}' was lost while starting the kernel"),
    })
}

/// The write end of a pipe whose lines are logged as the remote's, until the session closes it.
fn relay_stderr() -> Result<OwnedFd> {
    let (local, remote) = crate::ssh::pipe()?;
    let local = pipe::Receiver::from_owned_fd(local).map_err(crate::ssh::setup_error)?;
    tokio::spawn(async move {
        // Bytes, not text: a line that is not UTF-8 must not stop the draining.
        let mut from_remote = BufReader::new(local);
        let mut line = Vec::new();
        while bounded::read_line(&mut from_remote, &mut line, bounded::MAX_LINE)
            .await
            .is_ok_and(|n| n > 0)
        {
            let text = String::from_utf8_lossy(&line);
            tracing::info!("remote: {}", text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    });
    Ok(remote)
}
