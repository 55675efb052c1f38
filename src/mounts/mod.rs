//! Mounts, in the three directions a kernel's files can travel. Each is owned by what runs
//! it and ends with it (a launcher, or `sshpyk mount`'s process), including when that is killed.
//!
//! | module              | what is mounted             | where            | driven by                                   |
//! |---------------------|-----------------------------|------------------|---------------------------------------------|
//! | [`local_on_remote`] | a local directory           | on the remote    | `--mount-local-on-remote` (add/edit), the launcher |
//! | [`remote_on_local`] | a remote directory          | on this machine  | `sshpyk mount`                              |
//! | [`cloud_on_remote`] | a bucket or share (rclone)  | on the remote    | `sshpyk mounts add --backend`, the launcher |
//!
//! `local_on_remote` copies a project-sized tree and keeps both sides in sync ([`local_on_remote`]'s
//! `sync`), or serves it lazily over SFTP to the remote's sshfs; `cloud_on_remote`'s rclone runs
//! as a child of the remote supervisor; `remote_on_local` runs the local sshfs.

pub mod cloud_on_remote;
pub(crate) mod local_on_remote;
pub(crate) mod remote_on_local;

use cloud_on_remote::CloudMount;
use local_on_remote::MountSpec;

/// Whether a kernel with these mounts has one at the remote path `remote`. A path holds one
/// mount, a local directory or a cloud store: `sshpyk mounts add` refuses a second.
pub(crate) fn has_mount_at<'a>(
    remote: &str,
    local: impl IntoIterator<Item = &'a MountSpec>,
    cloud: &[CloudMount],
) -> bool {
    local.into_iter().any(|m| m.remote == remote) || cloud.iter().any(|m| m.remote == remote)
}
