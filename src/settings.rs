//! The sshpyk settings of a kernel: the model its kernel.json keeps under `metadata.sshpyk`,
//! the ranges and defaults of every setting, and the checks that need no network. A new setting goes here, in `cli.rs` (its flag) and in `cmd/settings.rs`
//! (the flag applied), then wherever it is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::logs::LogLevel;
use crate::mounts::cloud_on_remote::CloudMount;
use crate::mounts::local_on_remote::{MountSettings, MountSpec};
use crate::ssh::config;

pub(crate) const SETTINGS_VERSION: u32 = 1;
/// Timeouts, in seconds, that the launcher can use (a year at most, so that no deadline overflows).
pub(crate) const TIMEOUT_RANGE: (f64, f64) = (0.1, 31_536_000.0);

/// Everything the launcher needs to start one remote kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Settings {
    pub(crate) version: u32,
    pub(crate) ssh_host_alias: String,
    /// Absolute path of the ssh config file the alias is declared in.
    pub(crate) ssh_config: PathBuf,
    /// The ssh client: `ssh` (looked up on PATH) or an absolute path.
    pub(crate) ssh: String,
    /// The remote interpreter that has jupyter_client (absolute, or `~/` for the remote home).
    pub(crate) remote_python: String,
    pub(crate) remote_kernel_name: String,
    pub(crate) launch_timeout: f64,
    pub(crate) shutdown_timeout: f64,
    pub(crate) orphan_timeout: f64,
    #[serde(default)]
    pub(crate) mounts: Vec<MountSpec>,
    #[serde(default)]
    pub(crate) remote_sshfs: Option<String>,
    #[serde(default)]
    pub(crate) ssh_host_alias_local_on_remote: Option<String>,
    /// The launcher's verbosity (`--log-level`); `None`: info, or what `-v` asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) log_level: Option<LogLevel>,
    /// Variables set for the kernel, literally, after the init snippet (so they win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) remote_env: BTreeMap<String, String>,
    /// The kernel's working directory (absolute, or `~/`); the remote home when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) remote_cwd: Option<String>,
    /// Shell code run in a login shell of the remote user's shell before the remote python.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) remote_init: Option<String>,
    /// Run the kernel on a Slurm compute node allocated for it (the alias is the login node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) slurm: Option<SlurmSettings>,
    /// Cloud storage on the remote (`sshpyk mounts add --backend`); secrets are elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) cloud_mounts: Vec<CloudMount>,
}

impl Settings {
    /// What the mounts of this kernel need to know.
    pub(crate) fn mount_settings(&self) -> MountSettings<'_> {
        MountSettings {
            ssh_host_alias: &self.ssh_host_alias,
            remote_sshfs: self.remote_sshfs.as_deref(),
            ssh_host_alias_local_on_remote: self.ssh_host_alias_local_on_remote.as_deref(),
            launch_timeout: self.launch_timeout,
            remote_python: &self.remote_python,
            remote_init: self.remote_init.as_deref(),
        }
    }

    /// A hand-edited kernel.json may hold any number; the launcher needs sane durations.
    pub(crate) fn check_timeouts(&self) -> Result<()> {
        let (min, max) = TIMEOUT_RANGE;
        for (name, value) in [
            ("launch_timeout", self.launch_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("orphan_timeout", self.orphan_timeout),
        ] {
            if !(min..=max).contains(&value) {
                return Err(Error::Invalid(format!(
                    "sshpyk setting {name} = {value} is out of range ({min} to {max} s); fix it with `sshpyk edit`"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) const DEFAULT_LAUNCH_TIMEOUT: f64 = 30.0;
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: f64 = 30.0;
/// How long a kernel waits for a launcher whose connection is gone: a lunch break or an evening
/// with the laptop closed (VS Code's remote server waits as long), not a night. Shorter on
/// shared GPU hosts, where an abandoned kernel holds a GPU: `--orphan-timeout`.
pub(crate) const DEFAULT_ORPHAN_TIMEOUT: f64 = 3.0 * 3600.0;
pub(crate) const DEFAULT_GRACE: f64 = 60.0;

/// The `--slurm` settings of a kernelspec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SlurmSettings {
    /// sbatch options, split on blanks (`--partition gpu --gres gpu:1 --time 04:00:00`).
    pub(crate) options: String,
    /// Seconds the allocation outlives its last kernel, for a restart to adopt it.
    pub(crate) grace: f64,
}

/// Every setting at its default; alias, remote python and kernel empty.
pub(crate) fn defaults() -> Result<Settings> {
    Ok(Settings {
        version: SETTINGS_VERSION,
        ssh_host_alias: String::new(),
        ssh_config: default_ssh_config()?,
        ssh: "ssh".into(),
        remote_python: String::new(),
        remote_kernel_name: String::new(),
        launch_timeout: DEFAULT_LAUNCH_TIMEOUT,
        shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        orphan_timeout: DEFAULT_ORPHAN_TIMEOUT,
        mounts: Vec::new(),
        remote_sshfs: None,
        ssh_host_alias_local_on_remote: None,
        log_level: None,
        remote_env: Default::default(),
        remote_cwd: None,
        remote_init: None,
        slurm: None,
        cloud_mounts: Vec::new(),
    })
}

pub(crate) fn default_ssh_config() -> Result<PathBuf> {
    dirs::home_dir()
        .map(|h| h.join(".ssh/config"))
        .ok_or_else(|| {
            Error::Invalid("cannot find your home directory; pass --ssh-config FILE".into())
        })
}

/// Local checks that need no network: the config file and alias, the mounts' local dirs.
pub(crate) fn validate_local(settings: &Settings) -> Result<()> {
    config::require_alias(&settings.ssh_config, &settings.ssh_host_alias)?;
    for mount in &settings.mounts {
        if !Path::new(&mount.local).is_dir() {
            return Err(Error::Invalid(format!(
                "local mount directory {} does not exist; create it or fix --mount-local-on-remote",
                mount.local
            )));
        }
    }
    Ok(())
}

/// A remote path setting (`flag` names it) must be absolute, or start at the remote home.
pub(crate) fn require_remote_absolute(path: &str, flag: &str) -> Result<()> {
    if path.starts_with('/') || path.starts_with("~/") {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{flag} '{path}' is relative; give an absolute remote path (or one starting with ~/)"
        )))
    }
}
