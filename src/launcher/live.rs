//! What a running launcher does for others: answers `sshpyk ps` and `mounts list` over its
//! control socket ([`crate::control`]), and adds or removes mounts without a restart. What it
//! touches of the kernel (its session, its mounts) the launcher lends for each request
//! ([`Kernel`]); the mounts themselves are their table's ([`super::mounts`]).
//!
//! Cloud requests go to the supervisor as typed requests with an id; its answers come back
//! through the session ([`crate::supervisor::SupervisorSession::forward_cloud_reports`]) while supervision
//! goes on, so a slow `rclone lsf` never holds up interrupts, signals or the lease.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::mounts::MountTable;
use crate::control::{
    Call, ControlReply, ControlRequest, ControlServer, KernelState, KernelStatus,
};
use crate::mounts::cloud_on_remote::{CloudMount, CloudMountRequest};
use crate::supervisor::protocol::{CloudError, CloudReport, SupervisorRequest};
use crate::supervisor::{Ready, SupervisorSession};

pub(super) struct Live {
    control: Option<ControlServer>,
    reports_tx: mpsc::UnboundedSender<CloudReport>,
    reports: mpsc::UnboundedReceiver<CloudReport>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    started: SystemTime,
    kernelspec_dir: PathBuf,
}

/// A control request waiting for the supervisor's answer.
enum Pending {
    Describe(oneshot::Sender<ControlReply>),
    Add {
        mount: CloudMount,
        reply: oneshot::Sender<ControlReply>,
    },
    Remove {
        remote: String,
        reply: oneshot::Sender<ControlReply>,
    },
}

/// What supervision hears from the outside world.
pub(super) enum Heard {
    Call(Call),
    Cloud(CloudReport),
}

/// What a control request may touch of the running kernel, lent by the launcher for one
/// request or answer.
pub(super) struct Kernel<'a> {
    pub(crate) session: &'a SupervisorSession,
    pub(crate) mounts: &'a mut MountTable,
    pub(crate) ready: &'a Ready,
    pub(crate) ssh_host_alias: &'a str,
    /// Since when no session is up; `None` while connected.
    pub(crate) down_since: Option<SystemTime>,
}

impl Kernel<'_> {
    fn reconnecting(&self) -> bool {
        self.down_since.is_some()
    }
}

impl Live {
    pub(crate) fn new(kernelspec_dir: PathBuf) -> Live {
        let control = ControlServer::bind()
            .map_err(|e| tracing::warn!("no control socket ({e}); `sshpyk ps` will not list this kernel and its mounts cannot change while it runs"))
            .ok();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        Live {
            control,
            reports_tx,
            reports,
            pending: HashMap::new(),
            next_id: 1,
            started: SystemTime::now(),
            kernelspec_dir,
        }
    }

    /// Where the session sends answers to cloud requests.
    pub(crate) fn reports_sink(&self) -> mpsc::UnboundedSender<CloudReport> {
        self.reports_tx.clone()
    }

    /// The next request or answer. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Heard {
        let call = async {
            match &mut self.control {
                Some(server) => server.next().await,
                None => None,
            }
        };
        tokio::select! {
            Some(call) = call => Heard::Call(call),
            Some(report) = self.reports.recv() => Heard::Cloud(report),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Answers `heard`, with what the launcher lends of the kernel.
    pub(crate) async fn heard(&mut self, heard: Heard, kernel: Kernel<'_>) {
        match heard {
            Heard::Call(call) => self.call(call, kernel).await,
            Heard::Cloud(report) => self.cloud_report(report, kernel),
        }
    }

    async fn call(&mut self, Call { request, reply }: Call, kernel: Kernel<'_>) {
        if kernel.reconnecting() {
            let answer = match request {
                ControlRequest::Describe => ControlReply::Status(self.status(&kernel, None)),
                _ => ControlReply::Failed {
                    message: format!(
                        "the kernel is reconnecting to '{}'; try again once it is back",
                        kernel.ssh_host_alias
                    ),
                },
            };
            let _ = reply.send(answer);
            return;
        }
        match request {
            ControlRequest::Describe if !kernel.mounts.any_cloud() => {
                let _ = reply.send(ControlReply::Status(self.status(&kernel, None)));
            }
            ControlRequest::Describe => {
                let id = self.id();
                let request = SupervisorRequest::CloudStatus { id };
                self.send(kernel.session, id, request, Pending::Describe(reply));
            }
            ControlRequest::AddCloudMount { mount } => self.add(kernel, mount, reply),
            ControlRequest::RemoveMount { remote } => self.remove(kernel, remote, reply).await,
        }
    }

    fn send(
        &mut self,
        session: &SupervisorSession,
        id: u64,
        request: SupervisorRequest,
        pending: Pending,
    ) {
        session.request(&request);
        self.pending.insert(id, pending);
    }

    fn add(&mut self, kernel: Kernel<'_>, mount: CloudMount, reply: oneshot::Sender<ControlReply>) {
        if kernel.mounts.has(&mount.remote) {
            let _ = reply.send(ControlReply::Failed {
                message: format!(
                    "kernel {} already has a mount at {}",
                    kernel.ready.pid, mount.remote
                ),
            });
            return;
        }
        let request = match CloudMountRequest::load(&mount) {
            Ok(request) => request,
            Err(e) => {
                let _ = reply.send(ControlReply::Failed {
                    message: e.to_string(),
                });
                return;
            }
        };
        tracing::info!(
            "mounting {} at {} (asked while running)",
            mount.describe(),
            mount.remote
        );
        let id = self.id();
        let request = SupervisorRequest::MountCloud { id, mount: request };
        self.send(kernel.session, id, request, Pending::Add { mount, reply });
    }

    async fn remove(
        &mut self,
        kernel: Kernel<'_>,
        remote: String,
        reply: oneshot::Sender<ControlReply>,
    ) {
        let local = kernel.mounts.remove_local(&remote).await;
        if local {
            tracing::info!("unmounted {remote} (asked while running)");
        }
        if kernel.mounts.has_cloud(&remote) {
            let id = self.id();
            let request = SupervisorRequest::UnmountCloud {
                id,
                remote: remote.clone(),
            };
            self.send(
                kernel.session,
                id,
                request,
                Pending::Remove { remote, reply },
            );
            return;
        }
        let pid = kernel.ready.pid;
        let _ = reply.send(if local {
            ControlReply::Done {
                message: format!("unmounted {remote} from kernel {pid}"),
            }
        } else {
            ControlReply::Failed {
                message: format!("kernel {pid} has no mount at {remote}"),
            }
        });
    }

    fn cloud_report(&mut self, report: CloudReport, kernel: Kernel<'_>) {
        let Some(pending) = self.pending.remove(&report.id) else {
            return;
        };
        match pending {
            Pending::Describe(reply) => {
                let _ = reply.send(ControlReply::Status(self.status(&kernel, Some(&report))));
            }
            // `sshpyk mounts add` gave up waiting (and took the mount out of the kernelspec):
            // a mount made after all is not kept.
            Pending::Add { mount, reply } if reply.is_closed() && report.error.is_none() => {
                tracing::warn!(
                    "mounted {} at {} after `sshpyk mounts add` gave up waiting; unmounting it",
                    mount.describe(),
                    mount.remote
                );
                let id = self.id();
                kernel.session.request(&SupervisorRequest::UnmountCloud {
                    id,
                    remote: mount.remote,
                });
            }
            Pending::Add { mount, reply } => {
                let _ = reply.send(added(kernel, mount, report.error));
            }
            Pending::Remove { remote, reply } => {
                let _ = reply.send(removed(kernel, &remote, report.error));
            }
        }
    }

    /// This kernel as `ps` shows it; cloud states from `report` (none: not asked).
    fn status(&self, kernel: &Kernel<'_>, report: Option<&CloudReport>) -> KernelStatus {
        let reconnecting = kernel.reconnecting();
        let since_epoch = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok();
        KernelStatus {
            kernel_name: self
                .kernelspec_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            kernelspec_dir: self.kernelspec_dir.clone(),
            ssh_host_alias: kernel.ssh_host_alias.to_string(),
            hostname: kernel.ready.hostname.clone(),
            remote_pid: kernel.ready.pid,
            launcher_pid: std::process::id(),
            started: since_epoch(self.started).map_or(0, |d| d.as_secs()),
            state: if reconnecting {
                KernelState::Reconnecting
            } else {
                KernelState::Running
            },
            down_since: kernel.down_since.and_then(since_epoch).map(|d| d.as_secs()),
            slurm: kernel.session.slurm().cloned(),
            mounts: kernel.mounts.statuses(reconnecting, report),
        }
    }
}

/// The supervisor's answer to a live `mounts add`: kept when mounted.
fn added(kernel: Kernel<'_>, mount: CloudMount, error: Option<CloudError>) -> ControlReply {
    let (pid, alias) = (kernel.ready.pid, kernel.ssh_host_alias);
    match error {
        None => {
            tracing::info!("mounted {} at {}", mount.describe(), mount.remote);
            let message = format!(
                "mounted {} at {} on '{alias}' for kernel {pid}",
                mount.describe(),
                mount.remote
            );
            kernel.mounts.add_cloud(mount);
            ControlReply::Done { message }
        }
        Some(e) => ControlReply::Failed {
            message: format!(
                "cannot mount {} at {} on '{alias}' for kernel {pid}: {}",
                mount.describe(),
                mount.remote,
                e.message
            ),
        },
    }
}

/// The supervisor's answer to a live `mounts remove`: unmounted either way; an error says what
/// could not be uploaded, and where it is kept.
fn removed(kernel: Kernel<'_>, remote: &str, error: Option<CloudError>) -> ControlReply {
    let (pid, alias) = (kernel.ready.pid, kernel.ssh_host_alias);
    kernel.mounts.remove_cloud(remote);
    match error {
        Some(e) => {
            tracing::warn!("unmounted {remote}: {}", e.message);
            ControlReply::Failed {
                message: format!("{remote} of kernel {pid} on '{alias}': {}", e.message),
            }
        }
        None => {
            tracing::info!("unmounted {remote} (asked while running)");
            ControlReply::Done {
                message: format!("unmounted {remote} from kernel {pid} on '{alias}'"),
            }
        }
    }
}
