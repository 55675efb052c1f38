//! The host a command works on: an alias given on the command line, or an sshpyk kernelspec's.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::jupyter::kernelspec;
use crate::settings::default_ssh_config;

/// The ssh client, ssh config file and alias to reach a host with.
pub(crate) struct Host {
    pub(crate) ssh: String,
    pub(crate) ssh_config: PathBuf,
    pub(crate) alias: String,
}

impl Host {
    /// `alias` in `ssh_config` (default ~/.ssh/config) with `ssh` (default `ssh` on PATH).
    pub(crate) fn given(alias: &str, ssh_config: Option<&Path>, ssh: Option<&str>) -> Result<Host> {
        let ssh_config = match ssh_config {
            Some(path) => std::path::absolute(path)
                .map_err(Error::io(format!("cannot resolve {}", path.display())))?,
            None => default_ssh_config()?,
        };
        Ok(Host {
            ssh: ssh.unwrap_or("ssh").to_string(),
            ssh_config,
            alias: alias.to_string(),
        })
    }

    /// The host of the sshpyk kernelspec `name`.
    pub(crate) fn of_kernel(name: &str) -> Result<Host> {
        let settings = kernelspec::find(name)?.sshpyk_settings("pass the host alias instead")?;
        Ok(Host {
            ssh: settings.ssh,
            ssh_config: settings.ssh_config,
            alias: settings.ssh_host_alias,
        })
    }
}
