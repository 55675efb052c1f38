//! The launcher: the process Jupyter starts from kernel.json. To Jupyter it *is* the kernel:
//! it starts the remote kernel, forwards the five ports, relays interrupts, rides out network
//! drops, and exits (with the kernel's status) as soon as the remote kernel is gone, having
//! cleaned up here and there.
//!
//! States: starting → running ⇄ reconnecting → stopping. Fatal errors (bad input, the kernel
//! gone) end it; a lost connection is retried.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::ConnectionInfo;
use crate::error::{Error, Result};
use crate::jupyter::KernelClient;
use crate::kernelspec::{Kernelspec, Settings};
use crate::mount::Mounts;
use crate::remote::{Event, Exit, Ready, Session, StartRequest};
use crate::ssh::forward::{Forwarder, Listeners};
use crate::ssh::Master;

/// After a kill, how long the supervisor gets to report the kernel's end.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Budget of one reconnection attempt; short, so that a returning link is noticed quickly.
const RECONNECT_ATTEMPT: Duration = Duration::from_secs(2);
const RECONNECT_MAX_ATTEMPT: Duration = Duration::from_secs(10);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// The longest the launcher waits between two lease renewals.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(30);

pub struct LaunchOptions {
    pub kernelspec_dir: PathBuf,
    pub connection_file: PathBuf,
    pub ssh_verbose: bool,
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
    /// The session died and could not be re-established.
    Lost,
    /// Reconnected, but the supervisor (and so the kernel) was gone.
    Gone,
    /// Asked to stop while the connection was down.
    Abandoned(&'static str),
}

/// A running remote kernel and everything the launcher owns for it.
struct Running {
    master: Master,
    session: Session,
    forwarder: Forwarder,
    mounts: Mounts,
    link: watch::Sender<bool>,
    ready: Ready,
    info: ConnectionInfo,
    settings: Settings,
}

/// Runs one kernel to its end; returns the exit status for the process.
pub async fn run(opts: LaunchOptions) -> Result<i32> {
    let spec = Kernelspec::read(&opts.kernelspec_dir)?;
    let settings = spec.spec.settings().ok_or_else(|| {
        Error::Invalid(format!(
            "{} was not written by sshpyk; add the kernel with `sshpyk add`",
            opts.kernelspec_dir.display()
        ))
    })??;
    let info = ConnectionInfo::read(&opts.connection_file)?;
    let mut signals = Signals::register()?;

    let mut running = tokio::select! {
        r = start(&settings, info, opts.ssh_verbose) => r?,
        name = signals.stop() => return Err(Error::Local(format!("stopped by {name} while starting; nothing was left running"))),
    };

    let mut ping = tokio::time::interval(ping_interval(&settings));
    ping.tick().await;
    let outcome = loop {
        let event = tokio::select! {
            event = running.session.next_event() => event,
            _ = ping.tick() => {
                // A failed write shows up as a lost session on the next turn.
                let _ = running.session.ping().await;
                continue;
            }
            _ = signals.interrupt.recv() => {
                running.interrupt().await;
                continue;
            }
            _ = signals.terminate.recv() => break running.stop("SIGTERM").await,
            _ = signals.hangup.recv() => break running.stop("SIGHUP").await,
        };
        match event {
            Event::Exited(exit) if exit.reason.as_deref() == Some("orphaned") => {
                break Outcome::Gone
            }
            Event::Exited(exit) => break Outcome::Exited(exit),
            Event::Lost => {
                if let Some(outcome) = running.reconnect(&mut signals).await {
                    break outcome;
                }
            }
        }
    };
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

/// Often enough that the remote guard never mistakes a live launcher for a lost one.
fn ping_interval(settings: &Settings) -> Duration {
    Duration::from_secs_f64(settings.orphan_timeout / 3.0).min(MAX_PING_INTERVAL)
}

/// Connect, start the remote kernel, forward: all within `launch_timeout`. On failure every
/// piece already made is dropped, which ends it (forwards, session; the unarmed supervisor
/// then kills the kernel and removes its files at once).
async fn start(settings: &Settings, info: ConnectionInfo, ssh_verbose: bool) -> Result<Running> {
    let timeout = Duration::from_secs_f64(settings.launch_timeout);
    let deadline = Instant::now() + timeout;
    let listeners = Listeners::bind(&info)?;
    let alias = &settings.ssh_host_alias;
    let work = async {
        tracing::info!("connecting to '{alias}'");
        let master =
            Master::for_alias(&settings.ssh, &settings.ssh_config, alias, ssh_verbose).await?;
        master.ensure(deadline).await?;
        let mounts = Mounts::start(&master, settings, deadline).await?;
        tracing::info!("starting remote kernel '{}'", settings.remote_kernel_name);
        let request = StartRequest {
            remote_python: &settings.remote_python,
            kernel_name: &settings.remote_kernel_name,
            info: &info,
            orphan_timeout: settings.orphan_timeout,
            ping_interval: ping_interval(settings),
        };
        let (mut session, ready) = Session::start(&master, &request).await?;
        tracing::info!(
            "forwarding ports {} to the kernel ({})",
            port_list(&info),
            ready.transport
        );
        let (link, link_rx) = watch::channel(true);
        let forwarder = Forwarder::start(
            listeners,
            &master,
            &ready.endpoints,
            &settings.remote_python,
            link_rx,
        )?;
        session.arm().await?;
        Ok::<_, Error>((master, session, forwarder, mounts, link, ready))
    };
    let (master, session, forwarder, mounts, link, ready) =
        tokio::time::timeout_at(deadline, work).await.map_err(|_| Error::Timeout {
            what: format!("starting the kernel on '{alias}'"),
            secs: settings.launch_timeout,
            hint: "check that the host answers (`sshpyk list`) or raise --launch-timeout with `sshpyk edit`".into(),
        })??;
    tracing::info!(
        "ready: kernel pid {} on {} ('{alias}')",
        ready.pid,
        ready.hostname
    );
    Ok(Running {
        master,
        session,
        forwarder,
        mounts,
        link,
        ready,
        info,
        settings: settings.clone(),
    })
}

fn port_list(info: &ConnectionInfo) -> String {
    info.ports()
        .iter()
        .map(|(c, p)| format!("{}={p}", c.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Running {
    /// The session is gone: the link died (keep trying, the remote kernel is untouched) or the
    /// supervisor did (attaching says so). The local ports stay bound throughout, so clients
    /// reconnect by themselves. `None` once reconnected.
    async fn reconnect(&mut self, signals: &mut Signals) -> Option<Outcome> {
        let lost = Instant::now();
        self.link.send_replace(false);
        // Past this, the remote guard has certainly ended the kernel.
        let give_up = lost
            + Duration::from_secs_f64(self.settings.orphan_timeout)
            + ping_interval(&self.settings)
            + RECONNECT_ATTEMPT;
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            tracing::warn!("connection lost, reconnecting (attempt {attempt})");
            // Short at first, so that a returning link is found quickly; longer later, so that a
            // slow host (ProxyJump, slow authentication) gets the time it needs.
            let budget = (RECONNECT_ATTEMPT * 2u32.saturating_pow(attempt.min(8) - 1))
                .min(Duration::from_secs_f64(self.settings.launch_timeout).max(RECONNECT_ATTEMPT))
                .min(RECONNECT_MAX_ATTEMPT);
            let try_once = async {
                self.master.ensure(Instant::now() + budget).await?;
                Session::attach(
                    &self.master,
                    &self.settings.remote_python,
                    &self.ready.run_dir,
                )
                .await
            };
            tokio::select! {
                result = tokio::time::timeout(budget + RECONNECT_ATTEMPT, try_once) => match result {
                    Ok(Ok(Some(session))) => {
                        self.session = session;
                        self.link.send_replace(true);
                        tracing::info!("reconnected after {:.1} s; remote kernel {} kept its state", lost.elapsed().as_secs_f64(), self.ready.pid);
                        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.launch_timeout);
                        if let Err(e) = self.mounts.remount(&self.master, &self.settings, deadline).await {
                            tracing::warn!("could not mount again after reconnecting: {e}");
                        }
                        return None;
                    }
                    Ok(Ok(None)) => return Some(Outcome::Gone),
                    Ok(Err(e)) => tracing::debug!("reconnection attempt {attempt}: {e}"),
                    Err(_) => tracing::debug!("reconnection attempt {attempt} timed out"),
                },
                name = signals.stop() => return Some(Outcome::Abandoned(name)),
            }
            if Instant::now() >= give_up {
                return Some(Outcome::Gone);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                name = signals.stop() => return Some(Outcome::Abandoned(name)),
            }
            delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        }
        unreachable!("the reconnection loop only ends by returning")
    }

    /// SIGINT always interrupts the remote kernel, whatever mode it prefers, so that clients
    /// that only know "signal" (VS Code) work with "message" kernels too.
    async fn interrupt(&mut self) {
        tracing::info!("interrupting remote kernel {}", self.ready.pid);
        let result = if self.ready.interrupt_mode == "message" {
            self.interrupt_by_message().await
        } else {
            self.session.signal("SIGINT").await
        };
        if let Err(e) = result {
            tracing::warn!("interrupt failed: {e}");
        }
    }

    async fn interrupt_by_message(&mut self) -> Result<()> {
        let wait = Duration::from_secs(5);
        let mut client = KernelClient::connect(&self.info, wait).await?;
        client.interrupt(wait).await?;
        client.close();
        Ok(())
    }

    /// Graceful stop: ask the kernel to shut down, wait up to `shutdown_timeout`, then kill it.
    async fn stop(&mut self, why: &str) -> Outcome {
        tracing::info!("{why}: shutting down remote kernel {}", self.ready.pid);
        let grace = Duration::from_secs_f64(self.settings.shutdown_timeout);
        let deadline = Instant::now() + grace;
        let info = &self.info;
        let session = &mut self.session;
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
        tokio::pin!(ask);
        // The lease keeps being renewed: a shutdown may take longer than the orphan timeout.
        let mut ping = tokio::time::interval(ping_interval(&self.settings));
        ping.tick().await;
        loop {
            tokio::select! {
                event = session.next_event() => return outcome_of(event),
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ping.tick() => {}
                _ = &mut ask => unreachable!(),
            }
            let _ = session.ping().await;
        }
        tracing::warn!(
            "remote kernel {} did not exit within {} s; killing it",
            self.ready.pid,
            self.settings.shutdown_timeout
        );
        if self.session.kill().await.is_err() {
            return Outcome::Lost;
        }
        match tokio::time::timeout(KILL_GRACE, self.session.next_event()).await {
            Ok(event) => outcome_of(event),
            Err(_) => Outcome::Lost,
        }
    }
}

fn outcome_of(event: Event) -> Outcome {
    match event {
        Event::Exited(exit) => Outcome::Exited(exit),
        Event::Lost => Outcome::Lost,
    }
}
