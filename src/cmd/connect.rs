//! `sshpyk connect`: open, check or close a host's ssh connection by hand.

use std::path::PathBuf;

use super::settings::default_ssh_config;
use crate::cli::ConnectArgs;
use crate::error::{Error, Result};
use crate::kernelspec;
use crate::ssh::{config, Master};

pub async fn run(args: ConnectArgs, ssh_verbose: bool) -> Result<()> {
    let (ssh, ssh_config, alias) = host(&args)?;
    config::require_alias(&ssh_config, &alias)?;
    let master = Master::for_alias(&ssh, &ssh_config, &alias, ssh_verbose).await?;
    if args.check {
        return if master.is_up().await {
            println!(
                "'{alias}': a connection is open ({})",
                master.control_socket().display()
            );
            Ok(())
        } else {
            Err(Error::Ssh(format!(
                "'{alias}': no connection is open; open one with `{}`",
                master.connect_hint()
            )))
        };
    }
    if args.exit {
        if master.close().await? {
            println!("'{alias}': connection closed");
        } else {
            println!("'{alias}': no connection was open");
        }
        return Ok(());
    }
    if master.open_interactively().await? {
        println!(
            "'{alias}': connected; kernels and mounts of '{alias}' use this connection until it has been idle for {} (ControlPersist)",
            master.persist()
        );
    } else {
        println!("'{alias}': a connection is already open");
    }
    Ok(())
}

/// ssh client, config file and alias: given, or those of a kernelspec.
fn host(args: &ConnectArgs) -> Result<(String, PathBuf, String)> {
    if let Some(name) = &args.kernel_name {
        let found = kernelspec::find(name)?;
        let settings = found.spec.settings().ok_or_else(|| {
            Error::Invalid(format!(
                "kernel '{}' was not written by sshpyk; pass the host alias instead",
                found.name
            ))
        })??;
        return Ok((settings.ssh, settings.ssh_config, settings.ssh_host_alias));
    }
    let alias = args
        .alias
        .clone()
        .expect("clap requires an alias or --kernel-name");
    let ssh_config = match &args.ssh_config {
        Some(path) => std::path::absolute(path)
            .map_err(Error::io(format!("cannot resolve {}", path.display())))?,
        None => default_ssh_config()?,
    };
    Ok((
        args.ssh.clone().unwrap_or_else(|| "ssh".into()),
        ssh_config,
        alias,
    ))
}
