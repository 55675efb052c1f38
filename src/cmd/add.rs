//! `sshpyk add`: write a kernelspec that launches a remote kernel.

use super::settings;
use crate::cli::AddArgs;
use crate::error::{Error, Result};
use crate::jupyter::kernelspec;

pub(crate) async fn run(args: AddArgs) -> Result<()> {
    let settings = settings::new_settings(&args.spec)?;
    let name = args.kernel_name.clone().unwrap_or_else(|| {
        default_kernel_name(&settings.ssh_host_alias, &settings.remote_kernel_name)
    });
    kernelspec::validate_kernel_name(&name)?;
    crate::settings::validate_local(&settings)?;
    let data_dir = crate::jupyter::paths::user_data_dir()?;
    let dir = data_dir.join("kernels").join(&name);
    if dir.exists() && !args.replace {
        return Err(Error::Invalid(format!(
            "kernel '{name}' already exists in {}; pass --replace to overwrite it, or choose another --kernel-name",
            dir.display()
        )));
    }
    let remote = settings::remote_kernelspec(&settings).await?;
    let spec = settings::kernel_json(
        &dir,
        &settings,
        remote.as_ref(),
        args.spec.display_name.as_deref(),
        args.spec.language.as_deref(),
    )?;
    // What a replaced kernel's mounts kept in sshpyk's secrets dir goes with it.
    let replaced_secrets = crate::mounts::cloud_on_remote::secrets::named_in(&dir);
    kernelspec::write_new(&data_dir, &name, &spec, args.replace)?;
    for secrets in replaced_secrets {
        crate::mounts::cloud_on_remote::secrets::remove(&secrets);
    }
    println!(
        "added kernel '{name}' (\"{}\") in {}",
        spec.display_name,
        dir.display()
    );
    Ok(())
}

/// `ssh_<alias>_<remote kernel>`, with characters Jupyter refuses replaced by `_`.
fn default_kernel_name(alias: &str, remote_kernel: &str) -> String {
    format!("ssh_{alias}_{remote_kernel}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names_are_valid_kernel_names() {
        assert_eq!(
            super::default_kernel_name("gpu box@lab", "python3"),
            "ssh_gpu_box_lab_python3"
        );
    }
}
