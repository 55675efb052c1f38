//! What `list` shows of a mount without making it: the local side (the directory, and how the
//! remote is confined to it), the mode (a synced copy or lazy), and one round trip that checks
//! the remote's FUSE and sshfs.

use std::path::Path;

use super::wrapper::{self, RemoteMountFacts};
use super::{check_local_dir, MountSettings, MountSpec};
use crate::error::Result;
use crate::ssh::Master;

/// For `list`: what one mount looks like from here, without the network.
pub(crate) struct LocalFacts {
    pub(crate) local_dir: std::result::Result<(), String>,
    /// `Ok(how)` when the remote can reach the export and nothing else; `Err(why)` when
    /// sshpyk does not confine this mount.
    pub(crate) confinement: std::result::Result<String, String>,
}

pub(crate) fn local_facts(settings: &MountSettings<'_>, spec: &MountSpec) -> LocalFacts {
    let local_dir = check_local_dir(spec).map_err(|_| {
        format!(
            "{} does not exist; create it or fix the mount with `sshpyk edit`",
            spec.local
        )
    });
    let confinement = if let Some(back) = settings.ssh_host_alias_local_on_remote {
        Err(format!(
            "compatibility mode: the remote's sshfs connects back as '{back}' with its own ssh config; sshpyk does not confine what it can reach"
        ))
    } else {
        confinement(spec)
    };
    LocalFacts {
        local_dir,
        confinement,
    }
}

#[cfg(target_os = "linux")]
fn confinement(spec: &MountSpec) -> std::result::Result<String, String> {
    let ro = if spec.read_only() {
        ", read-only enforced by sshpyk"
    } else {
        ""
    };
    match super::export::Export::open(Path::new(&spec.local), spec.read_only()) {
        Ok(_) => Ok(format!(
            "openat2 RESOLVE_BENEATH: the remote reaches {} and nothing else{ro}",
            spec.local
        )),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err(
            "openat2 is not available (Linux 5.6 or later needed); the mount cannot be served"
                .into(),
        ),
        // A missing directory is reported on its own row.
        Err(_) => Ok(format!("openat2 RESOLVE_BENEATH{ro}")),
    }
}

#[cfg(not(target_os = "linux"))]
fn confinement(_spec: &MountSpec) -> std::result::Result<String, String> {
    Err("not available on this platform (needs Linux openat2); only --ssh-host-alias-local-on-remote mounts work here".into())
}

/// How a mount reaches the remote ([`mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A synced copy on the remote's disk.
    Synced,
    /// sshfs; `forced`: the spec says `lazy` (else the tree is too big to copy).
    Lazy { forced: bool },
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Synced => f.write_str(
                "synced copy on the remote's disk (imports and reads at disk speed; edits flow both ways)",
            ),
            Mode::Lazy { forced: true } => {
                f.write_str("lazy: sshfs, every access asks this machine (':lazy' in the spec)")
            }
            Mode::Lazy { forced: false } => f.write_str(
                "lazy: sshfs, every access asks this machine (a tree beyond 20000 files or 200 MiB; ':sync' copies it anyway)",
            ),
        }
    }
}

/// For `list`: whether the mount is a synced copy or lazy (sshfs), and why.
pub(crate) fn mode(spec: &MountSpec) -> std::result::Result<Mode, String> {
    #[cfg(target_os = "linux")]
    let synced = super::sync::wanted(spec).map_err(|e| e.to_string())?;
    #[cfg(not(target_os = "linux"))]
    let synced = false;
    Ok(if synced {
        Mode::Synced
    } else {
        Mode::Lazy {
            forced: spec.options.iter().any(|o| o == "lazy"),
        }
    })
}

/// For `list`: one round trip that checks FUSE and the configured sshfs paths on the remote.
pub(crate) async fn probe_remote(master: &Master, sshfs: &[String]) -> Result<RemoteMountFacts> {
    wrapper::probe(master, sshfs).await
}
