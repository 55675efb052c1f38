//! The launcher: the process Jupyter starts from kernel.json. To Jupyter it *is* the kernel:
//! it starts the remote kernel, forwards the five ports, relays interrupts, and exits (with the
//! kernel's status) as soon as the remote kernel is gone, having cleaned up here and there.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::connection::ConnectionInfo;
use crate::error::{Error, Result};
use crate::jupyter::KernelClient;
use crate::kernelspec::{Kernelspec, Settings};
use crate::remote::{Event, Exit, Ready, Session, StartRequest};
use crate::ssh::forward::{Forwarder, Listeners};
use crate::ssh::Master;

/// After a kill, how long the supervisor gets to report the kernel's end.
const KILL_GRACE: Duration = Duration::from_secs(5);

pub struct LaunchOptions {
    pub kernelspec_dir: PathBuf,
    pub connection_file: PathBuf,
    pub ssh_verbose: bool,
}

/// A running remote kernel and everything the launcher owns for it.
struct Running {
    session: Session,
    forwarder: Forwarder,
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

    // Registered before any child exists, so no signal is lost during the start.
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::io("cannot handle SIGINT"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(Error::io("cannot handle SIGTERM"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::io("cannot handle SIGHUP"))?;

    let start = start(&settings, info, opts.ssh_verbose);
    let mut running = tokio::select! {
        r = start => r?,
        _ = sigterm.recv() => return Err(Error::Local("stopped by SIGTERM while starting; nothing was left running".into())),
        _ = sighup.recv() => return Err(Error::Local("stopped by SIGHUP while starting; nothing was left running".into())),
    };

    let outcome = loop {
        tokio::select! {
            event = running.session.next_event() => break event,
            _ = sigint.recv() => running.interrupt().await,
            _ = sigterm.recv() => break running.stop("SIGTERM").await,
            _ = sighup.recv() => break running.stop("SIGHUP").await,
        }
    };
    running.forwarder.stop().await;
    match outcome {
        Event::Exited(exit) => {
            tracing::info!("remote kernel {} {}", running.ready.pid, exit.describe());
            Ok(exit.code())
        }
        Event::Lost => Err(Error::KernelLost(format!(
            "lost the connection to '{}' and with it the remote kernel {}; Jupyter will start a new one",
            running.settings.ssh_host_alias, running.ready.pid
        ))),
    }
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
        tracing::info!("starting remote kernel '{}'", settings.remote_kernel_name);
        let request = StartRequest {
            remote_python: &settings.remote_python,
            kernel_name: &settings.remote_kernel_name,
            info: &info,
            orphan_timeout: settings.orphan_timeout,
        };
        let (mut session, ready) = Session::start(&master, &request).await?;
        tracing::info!(
            "forwarding ports {} to the kernel ({})",
            port_list(&info),
            ready.transport
        );
        let forwarder = Forwarder::start(listeners, &master, &ready.endpoints)?;
        session.arm().await?;
        Ok::<_, Error>((session, forwarder, ready))
    };
    let (session, forwarder, ready) = tokio::time::timeout_at(deadline, work).await.map_err(|_| Error::Timeout {
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
        session,
        forwarder,
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
    async fn stop(&mut self, why: &str) -> Event {
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
        tokio::select! {
            event = session.next_event() => return event,
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ask => unreachable!(),
        }
        tracing::warn!(
            "remote kernel {} did not exit within {} s; killing it",
            self.ready.pid,
            self.settings.shutdown_timeout
        );
        if self.session.kill().await.is_err() {
            return Event::Lost;
        }
        match tokio::time::timeout(KILL_GRACE, self.session.next_event()).await {
            Ok(event) => event,
            Err(_) => Event::Exited(Exit {
                status: None,
                signal: Some(9),
                tail: vec![],
            }),
        }
    }
}
