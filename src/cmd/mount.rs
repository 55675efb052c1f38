//! `sshpyk mount`: which host (an alias, or an sshpyk kernelspec's), then [`crate::mounts::remote_on_local`].

use super::host::Host;
use crate::cli::MountArgs;
use crate::error::{Error, Result};
use crate::mounts::remote_on_local::{self, MountRequest};

pub(crate) async fn run(args: MountArgs, ssh_verbose: bool) -> Result<i32> {
    if args.umount {
        return remote_on_local::umount(&args.mountpoint, args.lazy)
            .await
            .map(|()| 0);
    }
    let host = match (&args.ssh_host_alias, &args.kernel_name) {
        (Some(alias), _) => Host::given(alias, args.ssh_config.as_deref(), None)?,
        (None, Some(name)) => Host::of_kernel(name)?,
        (None, None) => {
            return Err(Error::Invalid(
                "sshpyk mount needs --ssh-host-alias ALIAS or --kernel-name NAME".into(),
            ))
        }
    };
    remote_on_local::mount(MountRequest {
        ssh: host.ssh,
        ssh_config: host.ssh_config,
        alias: host.alias,
        remote_path: args.remote_path,
        mountpoint: args.mountpoint,
        foreground: args.foreground,
        direct: args.direct,
        options: args.options,
        ssh_verbose,
    })
    .await
}
