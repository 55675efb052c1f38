//! `sshpyk edit`: change exactly the given settings of an sshpyk kernelspec, then re-validate.

use super::settings;
use crate::cli::EditArgs;
use crate::error::{Error, Result};
use crate::kernelspec;

pub async fn run(args: EditArgs) -> Result<()> {
    let found = kernelspec::find(&args.kernel_name)?;
    let old = found.spec.settings().ok_or_else(|| {
        Error::Invalid(format!(
            "kernel '{}' was not written by sshpyk; only sshpyk kernels can be edited",
            found.name
        ))
    })??;
    let mut new = old.clone();
    settings::apply(&mut new, &args.spec, args.clear_mounts)?;
    settings::validate_local(&new)?;
    let remote = settings::remote_kernelspec(&new).await?;

    // Keep the names the user sees unless asked, but follow a change of remote kernel.
    let kernel_changed = new.remote_kernel_name != old.remote_kernel_name;
    let display_name = args
        .spec
        .display_name
        .clone()
        .or_else(|| (!kernel_changed).then(|| found.spec.display_name.clone()));
    let language = args
        .spec
        .language
        .clone()
        .or_else(|| (!kernel_changed || remote.is_none()).then(|| found.spec.language.clone()));
    let fresh = settings::kernel_json(
        &found.dir,
        &new,
        remote.as_ref(),
        display_name.as_deref(),
        language.as_deref(),
    )?;

    let mut spec = found.spec.clone();
    spec.argv = fresh.argv;
    spec.display_name = fresh.display_name;
    spec.language = fresh.language;
    if remote.is_some() {
        spec.interrupt_mode = fresh.interrupt_mode;
    }
    spec.set_settings(&new);
    kernelspec::rewrite(&found.dir, &spec)?;
    crate::cloud::secrets::remove_dropped(&old.cloud_mounts, &new.cloud_mounts);
    println!("updated kernel '{}' in {}", found.name, found.dir.display());
    Ok(())
}
