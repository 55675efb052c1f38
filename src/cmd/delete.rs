//! `sshpyk delete`: remove sshpyk kernelspecs (others only with --force).

use crate::cli::DeleteArgs;
use crate::error::{Error, Result};
use crate::jupyter::kernelspec;

pub(crate) fn run(args: DeleteArgs) -> Result<()> {
    // Check every name before removing any, so that one bad name deletes nothing.
    let mut found = Vec::new();
    for name in &args.names {
        let spec = kernelspec::find(name)?;
        if spec.spec.settings().is_none() && !args.force {
            return Err(Error::Invalid(
                if crate::python_sshpyk::settings_of(&spec.spec).is_some() {
                    format!(
                        "kernel '{0}' ({1}) was written by the Python sshpyk; pass --force to delete it anyway, or convert it with `sshpyk edit --kernel-name {0} --adopt`",
                        spec.name,
                        spec.dir.display()
                    )
                } else {
                    format!(
                        "kernel '{}' ({}) was not written by sshpyk; pass --force to delete it anyway",
                        spec.name,
                        spec.dir.display()
                    )
                },
            ));
        }
        found.push(spec);
    }
    for spec in found {
        let secrets = crate::mounts::cloud_on_remote::secrets::named_in(&spec.dir);
        std::fs::remove_dir_all(&spec.dir)
            .map_err(Error::io(format!("cannot remove {}", spec.dir.display())))?;
        for name in secrets {
            crate::mounts::cloud_on_remote::secrets::remove(&name);
        }
        println!("deleted kernel '{}' ({})", spec.name, spec.dir.display());
    }
    Ok(())
}
