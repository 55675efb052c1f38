//! A running kernel's mounts, local directories and cloud stores alike, as it has them now:
//! made at the start, changed by `sshpyk mounts add|remove` while it runs ([`super::live`]),
//! local ones made again after a reconnection. One owner, so that whether a remote path is
//! taken, and what `ps` shows, have one answer however the mounts changed.
//!
//! Beside the launcher that owns it rather than under [`crate::mounts`], which holds how each
//! direction mounts: this table answers in the control socket's terms ([`MountStatus`]), and
//! [`crate::control`] depends on [`crate::mounts`], not the other way round.

use tokio::time::Instant;

use crate::control::{MountState, MountStatus};
use crate::error::Result;
use crate::mounts::cloud_on_remote::CloudMount;
use crate::mounts::has_mount_at;
use crate::mounts::local_on_remote::{MountSettings, Mounts};
use crate::ssh::Master;
use crate::supervisor::protocol::{CloudReport, CloudState};

pub(super) struct MountTable {
    /// Local directories on the remote, served by the launcher.
    local: Mounts,
    /// Cloud stores on the remote, mounted by the supervisor: the kernelspec's at the start,
    /// then as mounted and unmounted since.
    cloud: Vec<CloudMount>,
}

impl MountTable {
    /// `local` made, `cloud` mounted by the supervisor at its start.
    pub(crate) fn new(local: Mounts, cloud: Vec<CloudMount>) -> MountTable {
        MountTable { local, cloud }
    }

    /// Whether the kernel has a mount, of either kind, at `remote`.
    pub(crate) fn has(&self, remote: &str) -> bool {
        has_mount_at(remote, self.local.specs(), &self.cloud)
    }

    /// Whether the kernel has a cloud mount at `remote`.
    pub(crate) fn has_cloud(&self, remote: &str) -> bool {
        self.cloud.iter().any(|m| m.remote == remote)
    }

    /// Whether only the supervisor can say how some of the mounts are.
    pub(crate) fn any_cloud(&self) -> bool {
        !self.cloud.is_empty()
    }

    /// Every mount as `ps` shows it: local ones as the launcher sees them (unknown while
    /// `reconnecting`), cloud ones from the supervisor's `report` (none: not asked).
    pub(crate) fn statuses(
        &self,
        reconnecting: bool,
        report: Option<&CloudReport>,
    ) -> Vec<MountStatus> {
        let local = self.local.states().into_iter().map(|(spec, up, detail)| {
            let state = match (reconnecting, up) {
                (true, _) => MountState::Unknown,
                (false, true) => MountState::Mounted,
                (false, false) => MountState::Failing,
            };
            MountStatus::local(spec, state, detail)
        });
        let cloud = self.cloud.iter().map(|mount| cloud_status(mount, report));
        local.chain(cloud).collect()
    }

    /// The supervisor mounted `mount` while the kernel runs.
    pub(crate) fn add_cloud(&mut self, mount: CloudMount) {
        self.cloud.push(mount);
    }

    /// The supervisor unmounted the cloud mount at `remote`.
    pub(crate) fn remove_cloud(&mut self, remote: &str) {
        self.cloud.retain(|m| m.remote != remote);
    }

    /// Ends the local mount at `remote` for good; whether there was one.
    pub(crate) async fn remove_local(&mut self, remote: &str) -> bool {
        self.local.remove(remote).await
    }

    /// After a reconnection: the local mounts again (the supervisor, and with it every cloud
    /// mount, outlived the connection).
    pub(crate) async fn remount(
        &mut self,
        master: &Master,
        settings: &MountSettings<'_>,
        deadline: Instant,
    ) -> Result<()> {
        self.local.remount(master, settings, deadline).await
    }

    /// Ends the local mounts; the cloud ones end with the supervisor.
    pub(crate) async fn stop(self) {
        self.local.stop().await;
    }
}

/// `mount` as the supervisor's `report` says it is (none: not asked).
fn cloud_status(mount: &CloudMount, report: Option<&CloudReport>) -> MountStatus {
    let found = report.and_then(|r| r.mounts.iter().find(|s| s.remote == mount.remote));
    let (state, error) = match (report, found) {
        (None, _) => (MountState::Unknown, None),
        (Some(_), Some(s)) if s.state == CloudState::Mounted => (MountState::Mounted, None),
        (Some(_), Some(s)) => (MountState::Failing, s.error.clone()),
        (Some(_), None) => (MountState::Failing, Some("not mounted".into())),
    };
    let pending = found.map_or(0, |s| s.pending.len());
    let detail = (pending > 0).then(|| format!("{pending} upload(s) pending"));
    MountStatus::cloud(mount, state, error, detail)
}
