//! `sshpyk edit`: change exactly the given settings of an sshpyk kernelspec, then re-validate;
//! `--adopt` converts a Python-sshpyk kernelspec into ours.

use std::path::Path;

use super::settings;
use crate::cli::{EditArgs, SpecArgs};
use crate::error::{Error, Result};
use crate::jupyter::kernelspec::{self, Kernelspec};
use crate::python_sshpyk;
use crate::settings::Settings;

pub(crate) async fn run(args: EditArgs) -> Result<()> {
    let found = kernelspec::find(&args.kernel_name)?;
    let old = current_settings(&found, args.adopt)?;
    let exe = std::env::current_exe().map_err(Error::io("cannot find the sshpyk binary's path"))?;
    let no_flags = args.spec == SpecArgs::default() && !args.clear_mounts && !args.adopt;
    if no_flags && runs(&found, &exe) {
        println!(
            "kernel '{}': nothing to change (give the settings to change; see `sshpyk edit --help`)",
            found.name
        );
        return Ok(());
    }
    let mut new = old.clone();
    let clear = settings::Clear {
        mounts: args.clear_mounts,
        remote_env: args.clear_remote_env,
    };
    settings::apply(&mut new, &args.spec, clear)?;
    crate::settings::validate_local(&new)?;
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
    if remote.is_some() || args.adopt {
        spec.interrupt_mode = fresh.interrupt_mode;
    }
    if args.adopt {
        python_sshpyk::forget(&mut spec);
    }
    spec.set_settings(&new);
    kernelspec::rewrite(&found.dir, &spec)?;
    crate::mounts::cloud_on_remote::secrets::remove_dropped(&old.cloud_mounts, &new.cloud_mounts);
    if args.adopt {
        println!(
            "adopted kernel '{}' (\"{}\") from the Python sshpyk in {}",
            found.name,
            spec.display_name,
            found.dir.display()
        );
    } else {
        println!("updated kernel '{}' in {}", found.name, found.dir.display());
    }
    if let Some(before) = found.spec.argv.first().filter(|b| Path::new(b) != exe) {
        println!(
            "kernel '{}' now runs this sshpyk, {} (it ran {before})",
            found.name,
            exe.display()
        );
    }
    Ok(())
}

/// The kernel's settings: ours, or with `adopt` the Python sshpyk's converted.
fn current_settings(found: &Kernelspec, adopt: bool) -> Result<Settings> {
    let theirs = python_sshpyk::settings_of(&found.spec);
    match (found.spec.settings(), theirs, adopt) {
        (Some(ours), _, false) => ours,
        (Some(_), _, true) => Err(Error::Invalid(format!(
            "kernel '{}' is already an sshpyk kernel; drop --adopt",
            found.name
        ))),
        (None, Some(theirs), true) => {
            let dropped = theirs.dropped();
            if !dropped.is_empty() {
                tracing::warn!(
                    "not carried over (sshpyk has no such setting): {}",
                    dropped.join(", ")
                );
            }
            theirs.to_settings(crate::settings::defaults()?).map_err(|missing| {
                Error::Invalid(format!(
                    "kernel '{}' ({}) lacks the Python sshpyk's {missing}; add it anew with `sshpyk add --replace`",
                    found.name,
                    found.dir.display()
                ))
            })
        }
        (None, Some(_), false) => Err(Error::Invalid(format!(
            "kernel '{0}' was written by the Python sshpyk; convert it with `sshpyk edit --kernel-name {0} --adopt`",
            found.name
        ))),
        (None, None, _) => Err(Error::Invalid(format!(
            "kernel '{}' was not written by sshpyk; only sshpyk kernels can be edited",
            found.name
        ))),
    }
}

/// Does kernel.json already start this binary's launcher for its own directory?
fn runs(found: &Kernelspec, exe: &Path) -> bool {
    let argv = &found.spec.argv;
    argv.first().is_some_and(|first| Path::new(first) == exe)
        && argv
            .iter()
            .position(|a| a == "--kernelspec")
            .and_then(|i| argv.get(i + 1))
            .is_some_and(|dir| Path::new(dir) == found.dir)
}
