//! `sshpyk connect`: open, check or close a host's ssh connection by hand.

use super::host::Host;
use crate::cli::ConnectArgs;
use crate::error::{Error, Result};
use crate::ssh::{config, Master};

pub(crate) async fn run(args: ConnectArgs, ssh_verbose: bool) -> Result<()> {
    let Host {
        ssh,
        ssh_config,
        alias,
    } = match (&args.kernel_name, &args.alias) {
        (Some(name), _) => Host::of_kernel(name)?,
        (None, alias) => Host::given(
            alias
                .as_deref()
                .expect("clap requires an alias or --kernel-name"),
            args.ssh_config.as_deref(),
            args.ssh.as_deref(),
        )?,
    };
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
