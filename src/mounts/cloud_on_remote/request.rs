//! A cloud mount as the remote supervisor takes it (`src/supervisor/cloud.py`), in the start
//! request or a live `mount_cloud`: its rclone config rendered with the secrets. Built here,
//! where the secrets are read and rendered; the supervisor's protocol only carries it.

use serde::Serialize;

use super::{secrets, CloudMount};
use crate::error::Result;

/// One cloud mount for the supervisor. `config` holds the credentials: it only ever travels in
/// a frame of the session, and `Debug` never shows it.
#[derive(Clone, Serialize)]
pub(crate) struct CloudMountRequest {
    /// The mount point on the remote.
    pub(crate) remote: String,
    /// `section:path` in `config`.
    pub(crate) source: String,
    /// The rclone config file's text.
    pub(crate) config: String,
    /// `rclone mount` flags.
    pub(crate) flags: Vec<String>,
    /// How messages name the mount (`s3:bucket/dir`).
    pub(crate) label: String,
}

impl CloudMountRequest {
    /// The request for `mount`, its secrets read from sshpyk's secrets dir.
    pub(crate) fn load(mount: &CloudMount) -> Result<CloudMountRequest> {
        let rendered = mount.render(&secrets::load(&mount.secrets)?)?;
        Ok(CloudMountRequest {
            remote: mount.remote.clone(),
            source: rendered.source,
            config: rendered.config,
            flags: rendered.flags,
            label: mount.describe(),
        })
    }
}

impl std::fmt::Debug for CloudMountRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudMountRequest")
            .field("remote", &self.remote)
            .field("source", &self.source)
            .field("flags", &self.flags)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}
