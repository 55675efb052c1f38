//! `sshpyk mount`: which host (an alias, or an sshpyk kernelspec's), then [`local_mount`].

use crate::cli::MountArgs;
use crate::error::{Error, Result};
use crate::kernelspec;
use crate::local_mount::{self, MountRequest};

pub async fn run(args: MountArgs, ssh_verbose: bool) -> Result<i32> {
    if args.umount {
        return local_mount::umount(&args.mountpoint, args.lazy)
            .await
            .map(|()| 0);
    }
    let (alias, ssh_config, ssh) = match (&args.ssh_host_alias, &args.kernel_name) {
        (Some(alias), _) => {
            let config = match &args.ssh_config {
                Some(config) => config.clone(),
                None => dirs::home_dir()
                    .map(|h| h.join(".ssh/config"))
                    .ok_or_else(|| {
                        Error::Invalid(
                            "cannot find your home directory; pass --ssh-config FILE".into(),
                        )
                    })?,
            };
            (alias.clone(), config, "ssh".to_string())
        }
        (None, Some(name)) => {
            let spec = kernelspec::find(name)?;
            let settings = spec.spec.settings().ok_or_else(|| {
                Error::Invalid(format!(
                    "kernel '{}' is not an sshpyk kernel; pass --ssh-host-alias ALIAS instead",
                    spec.name
                ))
            })??;
            let config = args.ssh_config.clone().unwrap_or(settings.ssh_config);
            (settings.ssh_host_alias, config, settings.ssh)
        }
        (None, None) => {
            return Err(Error::Invalid(
                "sshpyk mount needs --ssh-host-alias ALIAS or --kernel-name NAME".into(),
            ))
        }
    };
    local_mount::mount(MountRequest {
        ssh,
        ssh_config: std::path::absolute(&ssh_config).unwrap_or(ssh_config),
        alias,
        remote_path: args.remote_path,
        mountpoint: args.mountpoint,
        foreground: args.foreground,
        direct: args.direct,
        options: args.options,
        ssh_verbose,
    })
    .await
}
