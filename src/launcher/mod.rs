//! The launcher: the process Jupyter starts from kernel.json. To Jupyter it *is* the kernel:
//! it starts the remote kernel, forwards the five ports, relays interrupts, rides out network
//! drops, and exits (with the kernel's status) as soon as the remote kernel is gone, having
//! cleaned up here and there.
//!
//! States: starting → running ⇄ reconnecting → stopping. Fatal errors (bad input, the kernel
//! gone) end it; a lost connection is retried.

mod live;
mod mounts;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::jupyter::connection::ConnectionInfo;
use crate::jupyter::kernelspec::Kernelspec;
use crate::jupyter::KernelClient;
use crate::logs::LogLevel;
use crate::mounts::cloud_on_remote::CloudMountRequest;
use crate::mounts::local_on_remote::Mounts;
use crate::parent::Parent;
use crate::ports::{Forwarder, Listeners};
use crate::settings::Settings;
use crate::slurm::Allocation;
use crate::ssh::master::retry_on_session_refused;
use crate::ssh::Master;
use crate::supervisor::protocol::SupervisorRequest;
use crate::supervisor::{
    EndReason, Exit, InterruptMode, Ready, SessionEvent, StartRequest, SupervisorSession,
};
use mounts::MountTable;

/// How often the launcher renews the lease and checks that the remote answers (and that its
/// parent lives).
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which the connection is presumed stuck and a fresh one is raced against it.
const SILENT_AFTER: Duration = Duration::from_secs(3);
/// On SIGTERM: how long the kernel gets between SIGTERM and SIGKILL on the remote, and how long
/// the launcher waits for the report; together well inside Jupyter's 2.5 s before its SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(800);
const STOP_WAIT: Duration = Duration::from_millis(1500);
/// A new reconnection attempt starts this often while fewer than `MAX_ATTEMPTS` are under way,
/// so that one starts soon after the link returns whatever the earlier ones are stuck in.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
const MAX_ATTEMPTS: usize = 3;
/// Budget of one reconnection attempt (slow hosts: ProxyJump, slow authentication).
const RECONNECT_ATTEMPT: Duration = Duration::from_secs(10);

pub(crate) struct LaunchOptions {
    pub(crate) kernelspec_dir: PathBuf,
    pub(crate) connection_file: PathBuf,
    pub(crate) ssh_verbose: bool,
}

/// The signals the launcher acts on, registered before any child exists.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn register() -> Result<Self> {
        let on = |kind: SignalKind, name: &str| {
            signal(kind).map_err(Error::io(format!("cannot handle {name}")))
        };
        Ok(Signals {
            interrupt: on(SignalKind::interrupt(), "SIGINT")?,
            terminate: on(SignalKind::terminate(), "SIGTERM")?,
            hangup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next SIGTERM or SIGHUP, by name.
    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// How a running kernel ended, as far as the launcher can tell.
enum Outcome {
    Exited(Exit),
    /// The session died while stopping, and the kernel could not be reached again.
    Lost,
    /// Reconnected, but the supervisor (and so the kernel) was gone.
    Gone,
    /// Asked to stop while the connection was down.
    Abandoned(&'static str),
}

/// A running remote kernel and everything the launcher owns for it.
struct Running {
    master: Master,
    session: SupervisorSession,
    forwarder: Forwarder,
    /// Every mount of the kernel, local and cloud, as it has them now.
    mounts: MountTable,
    /// Since when no session is up (client connections stay open and wait).
    down_since: Option<std::time::SystemTime>,
    ready: Ready,
    info: ConnectionInfo,
    /// The kernelspec's settings, their mounts taken out: `mounts` has them, as they change.
    settings: Settings,
    /// The control socket and live mount changes ([`live`]).
    live: live::Live,
}

/// Runs one kernel to its end; returns the exit status for the process.
pub(crate) async fn run(opts: LaunchOptions) -> Result<i32> {
    let spec = Kernelspec::read(&opts.kernelspec_dir)?;
    let settings = spec.spec.settings().ok_or_else(|| {
        Error::Invalid(format!(
            "{} was not written by sshpyk; add the kernel with `sshpyk add`",
            opts.kernelspec_dir.display()
        ))
    })??;
    let info = ConnectionInfo::read(&opts.connection_file)?;
    let ssh_verbose = opts.ssh_verbose || settings.log_level == Some(LogLevel::Ssh);
    let allocation = settings
        .slurm
        .as_ref()
        .map(|slurm| Allocation::for_kernel(slurm, &opts.connection_file));
    let mut signals = Signals::register()?;
    let parent = Parent::from_env();

    let mut running = tokio::select! {
        r = start(&settings, info, allocation.as_ref(), ssh_verbose, &opts.kernelspec_dir) => r?,
        name = signals.stop() => return Err(Error::Local(format!("stopped by {name} while starting; nothing was left running"))),
    };
    let outcome = running.supervise(&mut signals, &parent).await;
    running.forwarder.stop().await;
    running.mounts.stop().await;
    let (alias, pid) = (&running.settings.ssh_host_alias, running.ready.pid);
    match outcome {
        Outcome::Exited(exit) => {
            tracing::info!("remote kernel {pid} {}", exit.describe());
            Ok(exit.code())
        }
        Outcome::Lost => Err(Error::KernelLost(format!(
            "lost the connection to '{alias}' while stopping remote kernel {pid}; the remote guard ends it after the orphan timeout"
        ))),
        Outcome::Gone => Err(Error::KernelLost(format!(
            "remote kernel {pid} on '{alias}' is gone (ended while the connection was down, after the orphan timeout of {} s); Jupyter will start a new one",
            running.settings.orphan_timeout
        ))),
        Outcome::Abandoned(name) => Err(Error::KernelLost(format!(
            "stopped by {name} while the connection to '{alias}' was down; the remote guard ends kernel {pid} after the orphan timeout ({} s)",
            running.settings.orphan_timeout
        ))),
    }
}

/// Often enough that the remote guard never mistakes a live launcher for a lost one, and that
/// a stuck connection is noticed within seconds.
fn ping_interval(settings: &Settings) -> Duration {
    Duration::from_secs_f64(settings.orphan_timeout / 3.0).min(PING_INTERVAL)
}

/// Connect, start the remote kernel, forward: all within `launch_timeout`. On failure every
/// piece already made is dropped, which ends it (ports, session; the unarmed supervisor then
/// kills the kernel and removes its files at once).
async fn start(
    settings: &Settings,
    info: ConnectionInfo,
    slurm: Option<&Allocation>,
    ssh_verbose: bool,
    kernelspec_dir: &Path,
) -> Result<Running> {
    let timeout = Duration::from_secs_f64(settings.launch_timeout);
    let deadline = Instant::now() + timeout;
    let listeners = Listeners::bind(&info)?;
    // From here on the kernel's mounts are the table's, which live changes keep up to date.
    let mut settings = settings.clone();
    let local_mounts = std::mem::take(&mut settings.mounts);
    let cloud_mounts = std::mem::take(&mut settings.cloud_mounts);
    let cloud_requests = cloud_mounts
        .iter()
        .map(CloudMountRequest::load)
        .collect::<Result<Vec<_>>>()?;
    let alias = &settings.ssh_host_alias;
    let work = async {
        tracing::info!("connecting to '{alias}'");
        let master =
            Master::for_alias(&settings.ssh, &settings.ssh_config, alias, ssh_verbose).await?;
        master.ensure(deadline).await?;
        let mounts =
            Mounts::start(&master, &local_mounts, &settings.mount_settings(), deadline).await?;
        tracing::info!("starting remote kernel '{}'", settings.remote_kernel_name);
        let request = StartRequest {
            settings: &settings,
            info: &info,
            slurm,
            ping_interval: ping_interval(&settings),
            cloud_mounts: &cloud_requests,
        };
        let request = &request;
        let (master, (mut session, ready)) =
            retry_on_session_refused(&master, deadline, move |m| async move {
                SupervisorSession::start(&m, request).await
            })
            .await?;
        tracing::info!(
            "forwarding ports {} to the kernel ({}) over one ssh session",
            port_list(&info),
            ready.transport
        );
        let forwarder = Forwarder::start(listeners, session.link())?;
        session.arm(ping_interval(&settings));
        Ok::<_, Error>((master, session, forwarder, mounts, ready))
    };
    let (master, mut session, forwarder, mounts, ready) = tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| start_timeout(&settings, slurm.is_some()))??;
    tracing::info!(
        "ready: kernel pid {} on {} ('{alias}')",
        ready.pid,
        ready.hostname
    );
    let live = live::Live::new(kernelspec_dir.to_owned());
    session.forward_cloud_reports(live.reports_sink());
    Ok(Running {
        master,
        session,
        forwarder,
        mounts: MountTable::new(mounts, cloud_mounts),
        down_since: None,
        ready,
        info,
        settings,
        live,
    })
}

/// [`start`] took longer than `launch_timeout`.
fn start_timeout(settings: &Settings, slurm: bool) -> Error {
    Error::Timeout {
        what: format!("starting the kernel on '{}'", settings.ssh_host_alias),
        secs: settings.launch_timeout,
        hint: if slurm {
            "a Slurm job still queued was cancelled; raise --launch-timeout with `sshpyk edit` for long queues, or check the host with `sshpyk list`".into()
        } else {
            "check that the host answers (`sshpyk list`) or raise --launch-timeout with `sshpyk edit`".into()
        },
    }
}

fn port_list(info: &ConnectionInfo) -> String {
    info.ports()
        .iter()
        .map(|(c, p)| format!("{}={p}", c.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What interrupts supervision.
enum Trouble {
    /// The session ended (the master or the connection died): reconnect.
    Lost,
    /// The session is open but the remote stopped answering pings: reconnect.
    Silent,
    /// The process that started us is gone.
    Orphaned,
    Interrupt,
    Stop(&'static str),
}

impl Running {
    /// Until the kernel ends, the launcher is stopped, or the kernel is lost for good.
    async fn supervise(&mut self, signals: &mut Signals, parent: &Parent) -> Outcome {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        loop {
            let trouble = tokio::select! {
                event = self.session.next_event() => match event {
                    SessionEvent::Exited(exit) => return exit_outcome(exit),
                    SessionEvent::Lost => Trouble::Lost,
                },
                _ = tick.tick() => {
                    if parent.is_gone() {
                        Trouble::Orphaned
                    } else if self.session.link().last_heard().elapsed() < SILENT_AFTER {
                        continue;
                    } else {
                        Trouble::Silent
                    }
                }
                _ = signals.interrupt.recv() => Trouble::Interrupt,
                _ = signals.terminate.recv() => Trouble::Stop("SIGTERM"),
                _ = signals.hangup.recv() => Trouble::Stop("SIGHUP"),
                heard = self.live.next() => {
                    self.heard(heard).await;
                    continue;
                }
            };
            match trouble {
                Trouble::Interrupt => {
                    self.interrupt().await;
                    continue;
                }
                Trouble::Stop(name) => return self.stop_now(name).await,
                Trouble::Orphaned => {
                    let why = format!(
                        "the process that started the kernel (pid {}) is gone",
                        parent.pid().unwrap_or(0)
                    );
                    return self.stop_gracefully(signals, &why).await;
                }
                Trouble::Lost | Trouble::Silent => {}
            }
            let still_open = matches!(trouble, Trouble::Silent);
            if let Some(outcome) = self.reconnect(signals, still_open).await {
                return outcome;
            }
        }
    }

    /// Races fresh connections against the old one until one reaches the supervisor (the
    /// remote kernel untouched), the old one answers again, or the kernel is certainly gone.
    /// Client connections stay open throughout and their streams resume. `None` once back.
    /// `still_open`: the old session has not ended, it only stopped answering.
    async fn reconnect(&mut self, signals: &mut Signals, still_open: bool) -> Option<Outcome> {
        let since = Instant::now();
        let alias = self.settings.ssh_host_alias.clone();
        self.down_since = Some(std::time::SystemTime::now());
        let back = self
            .reconnect_until_back(signals, still_open, since, &alias)
            .await;
        self.down_since = None;
        back
    }

    async fn reconnect_until_back(
        &mut self,
        signals: &mut Signals,
        still_open: bool,
        since: Instant,
        alias: &str,
    ) -> Option<Outcome> {
        let mut old_session = still_open;
        if still_open {
            tracing::warn!(
                "'{alias}' has not answered for {} s; racing a new connection against it",
                SILENT_AFTER.as_secs()
            );
        }
        // Past this, the remote guard has certainly ended the kernel.
        let give_up = since
            + Duration::from_secs_f64(self.settings.orphan_timeout)
            + ping_interval(&self.settings)
            + RECONNECT_ATTEMPT;
        let budget = Duration::from_secs_f64(self.settings.launch_timeout).min(RECONNECT_ATTEMPT);
        let mut attempts = JoinSet::new();
        let mut next_attempt = tokio::time::interval(RECONNECT_EVERY);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        let mut started = 0u32;
        // The attempts under way may wait seconds in their SYN backoff after the link is back:
        // one more starts the moment the host answers again.
        let prober = self.master.clone();
        let mut reachable_again = std::pin::pin!(async move { prober.reachable_again().await });
        let mut probing = true;
        loop {
            tokio::select! {
                _ = check.tick(), if old_session => {
                    if self.session.link().last_heard() > since {
                        tracing::info!("'{alias}' answers again after {:.1} s", since.elapsed().as_secs_f64());
                        return None;
                    }
                }
                event = self.session.next_event(), if old_session => match event {
                    SessionEvent::Exited(exit) => return Some(exit_outcome(exit)),
                    SessionEvent::Lost => old_session = false,
                },
                _ = next_attempt.tick(), if attempts.len() < MAX_ATTEMPTS => {
                    started += 1;
                    if started == 1 {
                        tracing::warn!("connection lost, reconnecting (attempt 1)");
                    } else {
                        tracing::debug!("reconnecting (attempt {started})");
                    }
                    attempts.spawn(connect(self.master.clone(), budget));
                }
                () = &mut reachable_again, if probing => {
                    probing = false;
                    started += 1;
                    tracing::info!("'{alias}' is reachable again; reconnecting (attempt {started})");
                    attempts.spawn(connect(self.master.clone(), budget));
                }
                Some(done) = attempts.join_next() => {
                    let master = match done.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                        Ok(master) => master,
                        Err(e) => {
                            tracing::debug!("reconnection attempt: {e}");
                            continue;
                        }
                    };
                    // One attach at a time: each one takes the supervisor over from the last.
                    match self.attach(master, budget).await {
                        Ok(Some((master, session))) => {
                            self.adopt(master, session, since).await;
                            return None;
                        }
                        Ok(None) => return Some(Outcome::Gone),
                        Err(e) => tracing::debug!("reattaching: {e}"),
                    }
                }
                _ = tokio::time::sleep_until(give_up) => return Some(Outcome::Gone),
                name = signals.stop() => return Some(Outcome::Abandoned(name)),
                heard = self.live.next() => self.heard(heard).await,
            }
        }
    }

    /// A control request, or the supervisor's answer to one ([`live`]).
    async fn heard(&mut self, heard: live::Heard) {
        let kernel = live::Kernel {
            session: &self.session,
            mounts: &mut self.mounts,
            ready: &self.ready,
            ssh_host_alias: &self.settings.ssh_host_alias,
            down_since: self.down_since,
        };
        self.live.heard(heard, kernel).await;
    }

    /// Reaches the supervisor again through `master`; `None` when it is gone.
    async fn attach(
        &self,
        master: Master,
        budget: Duration,
    ) -> Result<Option<(Master, SupervisorSession)>> {
        let deadline = Instant::now() + budget;
        let at = self
            .session
            .attach_point(&self.ready, &self.settings.remote_python);
        let at = &at;
        let link = &self.session.link();
        let ping = ping_interval(&self.settings);
        let work = retry_on_session_refused(&master, deadline, |m| async move {
            SupervisorSession::attach(&m, at, link, ping).await
        });
        let (master, session) = tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| Error::Ssh("reattaching to the supervisor timed out".into()))??;
        Ok(session.map(|session| (master, session)))
    }

    /// The new connection and session replace the old ones (dropping the old session asks its
    /// master to close the channel); clients reconnect over the new one; mounts come back.
    async fn adopt(&mut self, master: Master, mut session: SupervisorSession, since: Instant) {
        self.master = master;
        session.inherit_placement(&self.session);
        session.forward_cloud_reports(self.live.reports_sink());
        self.session = session;
        tracing::info!(
            "reconnected after {:.1} s; remote kernel {} kept its state and every stream resumed",
            since.elapsed().as_secs_f64(),
            self.ready.pid
        );
        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.launch_timeout);
        if let Err(e) = self
            .mounts
            .remount(&self.master, &self.settings.mount_settings(), deadline)
            .await
        {
            tracing::warn!("could not mount again after reconnecting: {e}");
        }
    }

    /// SIGINT always interrupts the remote kernel, whatever mode it prefers, so that clients
    /// that only know "signal" (VS Code) work with "message" kernels too.
    async fn interrupt(&mut self) {
        // jupyter_client interrupts before every shutdown too: this line is no error.
        tracing::info!(
            "interrupting remote kernel {} (SIGINT; Jupyter also sends one before a shutdown)",
            self.ready.pid
        );
        match self.ready.interrupt_mode {
            InterruptMode::Message => {
                if let Err(e) = self.interrupt_by_message().await {
                    tracing::warn!("interrupt failed: {e}");
                }
            }
            InterruptMode::Signal => self.session.request(&SupervisorRequest::Signal {
                signal: "SIGINT".into(),
            }),
        }
    }

    async fn interrupt_by_message(&mut self) -> Result<()> {
        let wait = Duration::from_secs(5);
        let mut client = KernelClient::connect(&self.info, wait).await?;
        client.interrupt(wait).await?;
        client.close();
        Ok(())
    }

    /// SIGTERM/SIGHUP: Jupyter already asked the kernel to shut down and is about to SIGKILL
    /// us, so end the kernel and everything it started now, whatever it ignores.
    async fn stop_now(&mut self, why: &str) -> Outcome {
        tracing::info!(
            "{why}: ending remote kernel {} and what it started",
            self.ready.pid
        );
        self.session.request(&SupervisorRequest::Stop {
            grace: STOP_GRACE.as_secs_f64(),
        });
        match tokio::time::timeout(STOP_WAIT, self.session.next_event()).await {
            Ok(event) => event_outcome(event),
            Err(_) => Outcome::Lost,
        }
    }

    /// Our own decision to stop (the parent is gone): ask the kernel to shut down, wait up to
    /// `shutdown_timeout`, then end it.
    async fn stop_gracefully(&mut self, signals: &mut Signals, why: &str) -> Outcome {
        tracing::info!("{why}: shutting down remote kernel {}", self.ready.pid);
        let grace = Duration::from_secs_f64(self.settings.shutdown_timeout);
        let info = &self.info;
        let ask = async {
            match KernelClient::connect(info, grace).await {
                Ok(mut client) => {
                    if let Err(e) = client.shutdown(false, grace).await {
                        tracing::debug!("shutdown_request: {e}");
                    }
                    client.close();
                }
                Err(e) => tracing::debug!("cannot reach the kernel for shutdown_request: {e}"),
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            event = self.session.next_event() => return event_outcome(event),
            _ = tokio::time::sleep(grace) => {}
            _ = ask => unreachable!("asking never ends by itself"),
            name = signals.stop() => return self.stop_now(name).await,
        }
        tracing::warn!(
            "remote kernel {} did not exit within {} s",
            self.ready.pid,
            self.settings.shutdown_timeout
        );
        self.stop_now("shutdown timeout").await
    }
}

fn exit_outcome(exit: Exit) -> Outcome {
    if exit.reason == Some(EndReason::Orphaned) {
        Outcome::Gone
    } else {
        Outcome::Exited(exit)
    }
}

fn event_outcome(event: SessionEvent) -> Outcome {
    match event {
        SessionEvent::Exited(exit) => exit_outcome(exit),
        SessionEvent::Lost => Outcome::Lost,
    }
}

/// One reconnection attempt: the current master when it is gone (opening it again, as every
/// launcher of the host would), else a fresh connection of our own (the current one is up but
/// stuck: after a link cut, an old TCP connection only resumes when its retransmission backoff
/// next fires, seconds after the link is back).
async fn connect(current: Master, budget: Duration) -> Result<Master> {
    let deadline = Instant::now() + budget;
    if current.is_up().await {
        current.open_fresh(deadline).await
    } else {
        current.ensure(deadline).await?;
        Ok(current)
    }
}
