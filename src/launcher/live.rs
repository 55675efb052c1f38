//! What a running launcher does for others: answers `sshpyk ps` and `mounts list` over its
//! control socket ([`crate::control`]), and adds or removes mounts without a restart.
//!
//! Cloud requests go to the supervisor as typed requests with an id; its answers come back
//! through the session ([`crate::supervisor::SupervisorSession::forward_cloud_reports`]) while supervision
//! goes on, so a slow `rclone lsf` never holds up interrupts, signals or the lease.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::Running;
use crate::control::{
    Call, ControlReply, ControlRequest, ControlServer, KernelState, KernelStatus, MountKind,
    MountState, MountStatus,
};
use crate::error::Result;
use crate::mounts::cloud_on_remote::{secrets, CloudMount};
use crate::supervisor::protocol::{CloudMountRequest, CloudReport, CloudState, SupervisorRequest};

pub(super) struct Live {
    control: Option<ControlServer>,
    reports_tx: mpsc::UnboundedSender<CloudReport>,
    reports: mpsc::UnboundedReceiver<CloudReport>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    /// The kernel's cloud mounts now: the kernelspec's at start, then live changes.
    cloud: Vec<CloudMount>,
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

impl Live {
    pub fn new(kernelspec_dir: PathBuf, cloud: Vec<CloudMount>) -> Live {
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
            cloud,
            started: SystemTime::now(),
            kernelspec_dir,
        }
    }

    /// Where the session sends answers to cloud requests.
    pub fn reports_sink(&self) -> mpsc::UnboundedSender<CloudReport> {
        self.reports_tx.clone()
    }

    /// The next request or answer. Cancel-safe.
    pub async fn next(&mut self) -> Heard {
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
}

/// The rclone request for `mount`, its secrets read from sshpyk's secrets dir.
pub(super) fn cloud_request(mount: &CloudMount) -> Result<CloudMountRequest> {
    let rendered = mount.render(&secrets::load(&mount.secrets)?)?;
    Ok(CloudMountRequest {
        remote: mount.remote.clone(),
        source: rendered.source,
        config: rendered.config,
        flags: rendered.flags,
        label: mount.describe(),
    })
}

impl Running {
    pub(super) async fn heard(&mut self, heard: Heard) {
        match heard {
            Heard::Call(call) => self.call(call).await,
            Heard::Cloud(report) => self.cloud_report(report),
        }
    }

    fn reconnecting(&self) -> bool {
        self.down_since.is_some()
    }

    async fn call(&mut self, Call { request, reply }: Call) {
        if self.reconnecting() {
            let answer = match request {
                ControlRequest::Describe => ControlReply::Status(self.status(None)),
                _ => ControlReply::Failed {
                    message: format!(
                        "the kernel is reconnecting to '{}'; try again once it is back",
                        self.settings.ssh_host_alias
                    ),
                },
            };
            let _ = reply.send(answer);
            return;
        }
        match request {
            ControlRequest::Describe if self.live.cloud.is_empty() => {
                let _ = reply.send(ControlReply::Status(self.status(None)));
            }
            ControlRequest::Describe => {
                let id = self.live.id();
                self.send(
                    id,
                    SupervisorRequest::CloudStatus { id },
                    Pending::Describe(reply),
                );
            }
            ControlRequest::AddCloudMount { mount } => self.add(mount, reply),
            ControlRequest::RemoveMount { remote } => self.remove(remote, reply).await,
        }
    }

    fn send(&mut self, id: u64, request: SupervisorRequest, pending: Pending) {
        self.session.request(&request);
        self.live.pending.insert(id, pending);
    }

    fn add(&mut self, mount: CloudMount, reply: oneshot::Sender<ControlReply>) {
        if self.live.cloud.iter().any(|m| m.remote == mount.remote)
            || self
                .settings
                .mounts
                .iter()
                .any(|m| m.remote == mount.remote)
        {
            let _ = reply.send(ControlReply::Failed {
                message: format!(
                    "kernel {} already has a mount at {}",
                    self.ready.pid, mount.remote
                ),
            });
            return;
        }
        let request = match cloud_request(&mount) {
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
        let id = self.live.id();
        self.send(
            id,
            SupervisorRequest::MountCloud { id, mount: request },
            Pending::Add { mount, reply },
        );
    }

    async fn remove(&mut self, remote: String, reply: oneshot::Sender<ControlReply>) {
        let local = self.mounts.remove(&remote).await;
        if local {
            tracing::info!("unmounted {remote} (asked while running)");
        }
        if self.live.cloud.iter().any(|m| m.remote == remote) {
            let id = self.live.id();
            self.send(
                id,
                SupervisorRequest::UnmountCloud {
                    id,
                    remote: remote.clone(),
                },
                Pending::Remove { remote, reply },
            );
            return;
        }
        let _ = reply.send(if local {
            ControlReply::Done {
                message: format!("unmounted {remote} from kernel {}", self.ready.pid),
            }
        } else {
            ControlReply::Failed {
                message: format!("kernel {} has no mount at {remote}", self.ready.pid),
            }
        });
    }

    fn cloud_report(&mut self, report: CloudReport) {
        let Some(pending) = self.live.pending.remove(&report.id) else {
            return;
        };
        let pid = self.ready.pid;
        let alias = &self.settings.ssh_host_alias;
        match pending {
            Pending::Describe(reply) => {
                let _ = reply.send(ControlReply::Status(self.status(Some(&report))));
            }
            // `sshpyk mounts add` gave up waiting (and took the mount out of the kernelspec):
            // a mount made after all is not kept.
            Pending::Add { mount, reply } if reply.is_closed() && report.error.is_none() => {
                tracing::warn!(
                    "mounted {} at {} after `sshpyk mounts add` gave up waiting; unmounting it",
                    mount.describe(),
                    mount.remote
                );
                let id = self.live.id();
                self.session.request(&SupervisorRequest::UnmountCloud {
                    id,
                    remote: mount.remote,
                });
            }
            Pending::Add { mount, reply } => {
                let answer = match report.error {
                    None => {
                        tracing::info!("mounted {} at {}", mount.describe(), mount.remote);
                        let message = format!(
                            "mounted {} at {} on '{alias}' for kernel {pid}",
                            mount.describe(),
                            mount.remote
                        );
                        self.live.cloud.push(mount);
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
                };
                let _ = reply.send(answer);
            }
            Pending::Remove { remote, reply } => {
                self.live.cloud.retain(|m| m.remote != remote);
                // Unmounted either way; an error says what could not be uploaded, and where
                // it is kept.
                let answer = match report.error {
                    Some(e) => {
                        tracing::warn!("unmounted {remote}: {}", e.message);
                        ControlReply::Failed {
                            message: format!(
                                "{remote} of kernel {pid} on '{alias}': {}",
                                e.message
                            ),
                        }
                    }
                    None => {
                        tracing::info!("unmounted {remote} (asked while running)");
                        ControlReply::Done {
                            message: format!("unmounted {remote} from kernel {pid} on '{alias}'"),
                        }
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// This kernel as `ps` shows it; cloud states from `report` (none: not asked).
    fn status(&self, report: Option<&CloudReport>) -> KernelStatus {
        let reconnecting = self.reconnecting();
        let mut mounts: Vec<MountStatus> = self
            .mounts
            .states()
            .into_iter()
            .map(|(spec, up, detail)| MountStatus {
                remote: spec.remote.clone(),
                kind: MountKind::LocalOnRemote,
                source: spec.local.clone(),
                read_only: spec.read_only(),
                state: match (reconnecting, up) {
                    (true, _) => MountState::Unknown,
                    (false, true) => MountState::Mounted,
                    (false, false) => MountState::Failing,
                },
                error: None,
                detail,
            })
            .collect();
        for mount in &self.live.cloud {
            let found = report.and_then(|r| r.mounts.iter().find(|s| s.remote == mount.remote));
            let (state, error) = match (report, found) {
                (None, _) => (MountState::Unknown, None),
                (Some(_), Some(s)) if s.state == CloudState::Mounted => (MountState::Mounted, None),
                (Some(_), Some(s)) => (MountState::Failing, s.error.clone()),
                (Some(_), None) => (MountState::Failing, Some("not mounted".into())),
            };
            let pending = found.map_or(0, |s| s.pending.len());
            mounts.push(MountStatus {
                remote: mount.remote.clone(),
                kind: MountKind::Cloud,
                source: mount.describe(),
                read_only: !mount.rw,
                state,
                error,
                detail: (pending > 0).then(|| format!("{pending} upload(s) pending")),
            });
        }
        KernelStatus {
            kernel_name: self
                .live
                .kernelspec_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            kernelspec_dir: self.live.kernelspec_dir.clone(),
            ssh_host_alias: self.settings.ssh_host_alias.clone(),
            hostname: self.ready.hostname.clone(),
            remote_pid: self.ready.pid,
            launcher_pid: std::process::id(),
            started: self
                .live
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            state: if reconnecting {
                KernelState::Reconnecting
            } else {
                KernelState::Running
            },
            down_since: self
                .down_since
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            slurm: self.session.slurm().cloned(),
            mounts,
        }
    }
}
