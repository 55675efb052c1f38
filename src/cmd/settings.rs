//! Turning `add`/`edit` flags into validated settings and a kernel.json.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::environment;
use crate::cli::SpecArgs;
use crate::error::{Error, Result};
use crate::jupyter::kernelspec::KernelJson;
use crate::mounts::local_on_remote::MountSpec;
use crate::probe::{self, ProbeTarget, PythonProbe, RemoteKernelspec};
use crate::settings::{require_remote_absolute, Settings};

use crate::ssh::Master;

/// `add`/`edit` never wait longer than this for the remote to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for `add`: the required flags must be there, the rest take defaults.
pub(crate) fn new_settings(args: &SpecArgs) -> Result<Settings> {
    // Every missing flag at once, not one per try.
    let missing: Vec<&str> = [
        (args.ssh_host_alias.is_none(), "--ssh-host-alias ALIAS"),
        (
            args.remote_kernel_name.is_none(),
            "--remote-kernel-name NAME",
        ),
        (
            args.remote_python_prefix.is_none() && args.remote_python.is_none(),
            "--remote-python-prefix DIR (or --remote-python PATH)",
        ),
    ]
    .into_iter()
    .filter_map(|(absent, flag)| absent.then_some(flag))
    .collect();
    let (Some(alias), Some(kernel), []) = (
        args.ssh_host_alias.clone(),
        args.remote_kernel_name.clone(),
        &missing[..],
    ) else {
        return Err(Error::Invalid(format!(
            "sshpyk add needs {}",
            missing.join(", ")
        )));
    };
    let mut settings = Settings {
        ssh_host_alias: alias,
        remote_kernel_name: kernel,
        ..crate::settings::defaults()?
    };
    apply(&mut settings, args, Clear::default())?;
    Ok(settings)
}

/// What `edit` empties before it applies the flags.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Clear {
    pub(crate) mounts: bool,
    pub(crate) remote_env: bool,
}

/// Applies exactly the given flags, after emptying what `clear` says.
pub(crate) fn apply(settings: &mut Settings, args: &SpecArgs, clear: Clear) -> Result<()> {
    if let Some(alias) = &args.ssh_host_alias {
        settings.ssh_host_alias = alias.clone();
    }
    if let Some(kernel) = &args.remote_kernel_name {
        settings.remote_kernel_name = kernel.clone();
    }
    if let Some(prefix) = &args.remote_python_prefix {
        require_remote_absolute(prefix, "--remote-python-prefix")?;
        refuse_interpreter_as_prefix(prefix)?;
        settings.remote_python = format!("{}/bin/python", prefix.trim_end_matches('/'));
    }
    if let Some(python) = &args.remote_python {
        // A bare command name is looked up on the remote PATH (after --remote-init).
        if python.contains('/') {
            require_remote_absolute(python, "--remote-python")?;
        } else if python.is_empty() {
            return Err(Error::Invalid(
                "--remote-python is empty; give the remote interpreter's path or command name"
                    .into(),
            ));
        }
        settings.remote_python = python.clone();
    }
    if let Some(path) = &args.ssh_config {
        settings.ssh_config = absolute(path)?;
    }
    if let Some(ssh) = &args.ssh {
        settings.ssh = if ssh.contains('/') {
            absolute(Path::new(ssh))?.to_string_lossy().into_owned()
        } else {
            ssh.clone()
        };
    }
    if let Some(t) = args.launch_timeout {
        settings.launch_timeout = t;
    }
    if let Some(t) = args.shutdown_timeout {
        settings.shutdown_timeout = t;
    }
    if let Some(t) = args.orphan_timeout {
        settings.orphan_timeout = t;
    }
    if clear.mounts {
        settings.mounts.clear();
        settings.cloud_mounts.clear();
    }
    for spec in &args.mount_local_on_remote {
        let mount = MountSpec::parse(spec)?;
        // A later spec for the same remote path replaces the earlier one.
        settings.mounts.retain(|m| m.remote != mount.remote);
        settings.mounts.push(mount);
    }
    if let Some(sshfs) = &args.remote_sshfs {
        settings.remote_sshfs = Some(sshfs.clone()).filter(|s| !s.is_empty());
    }
    if let Some(level) = args.log_level {
        settings.log_level = Some(level).filter(|l| *l != crate::logs::LogLevel::Info);
    }
    if let Some(alias) = &args.ssh_host_alias_local_on_remote {
        settings.ssh_host_alias_local_on_remote = Some(alias.clone()).filter(|s| !s.is_empty());
    }
    environment::apply(settings, args, clear.remote_env)?;
    apply_slurm(settings, args)
}

fn apply_slurm(settings: &mut Settings, args: &SpecArgs) -> Result<()> {
    if let Some(options) = &args.slurm {
        let grace = settings
            .slurm
            .as_ref()
            .map_or(crate::settings::DEFAULT_GRACE, |s| s.grace);
        settings.slurm = Some(options.trim())
            .filter(|o| !o.is_empty())
            .map(|options| crate::settings::SlurmSettings {
                options: options.to_string(),
                grace,
            });
    }
    if let Some(grace) = args.slurm_grace {
        match &mut settings.slurm {
            Some(slurm) => slurm.grace = grace,
            None => {
                return Err(Error::Invalid(
                    "--slurm-grace applies to Slurm kernels only; give --slurm OPTIONS too".into(),
                ))
            }
        }
    }
    Ok(())
}

/// `--remote-python-prefix /env/bin/python3` means `--remote-python /env/bin/python3`.
fn refuse_interpreter_as_prefix(prefix: &str) -> Result<()> {
    let path = Path::new(prefix.trim_end_matches('/'));
    let is_interpreter = path
        .file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with("python"))
        && path.parent().and_then(Path::file_name) == Some("bin".as_ref());
    if !is_interpreter {
        return Ok(());
    }
    let env = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    Err(Error::Invalid(format!(
        "--remote-python-prefix {prefix} is an interpreter, not an environment: pass --remote-python {prefix} (or --remote-python-prefix {})",
        env.display()
    )))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(format!("cannot resolve {}", path.display())))
}

/// Reads the remote kernelspec over ssh. Remote facts that prove the settings wrong are errors;
/// a host that cannot be reached now is only a warning (the kernelspec is still useful later).
pub(crate) async fn remote_kernelspec(settings: &Settings) -> Result<Option<RemoteKernelspec>> {
    let master = Master::for_alias(
        &settings.ssh,
        &settings.ssh_config,
        &settings.ssh_host_alias,
        false,
    )
    .await?;
    let deadline = tokio::time::Instant::now()
        + PROBE_TIMEOUT.min(Duration::from_secs_f64(settings.launch_timeout));
    let reached = async {
        master.ensure(deadline).await?;
        tokio::time::timeout_at(
            deadline,
            probe::probe(&master, &[ProbeTarget::of(settings)]),
        )
        .await
        .map_err(|_| {
            Error::Ssh(format!(
                "'{}' did not answer the probe in time",
                settings.ssh_host_alias
            ))
        })?
    };
    let facts = match reached.await {
        Ok(facts) => facts,
        Err(e) => {
            tracing::warn!(
                "could not check the remote kernel now ({e}); writing the kernelspec anyway"
            );
            return Ok(None);
        }
    };
    let alias = &settings.ssh_host_alias;
    let python = &settings.remote_python;
    match facts.python(settings) {
        Some(PythonProbe::InitFailed(failure)) => Err(failure.error(alias)),
        Some(PythonProbe::Found(p)) if p.cwd.is_some() && !p.cwd_exists => Err(Error::Remote(format!(
            "remote working directory {} does not exist on '{alias}'; create it or fix --remote-cwd",
            p.cwd.as_deref().unwrap_or_default()
        ))),
        Some(PythonProbe::Found(p)) if p.jupyter_client.is_some() && !p.runtime_dir_writable => Err(Error::Remote(format!(
            "remote runtime dir {} on '{alias}' is not writable; fix its permissions or set JUPYTER_RUNTIME_DIR there",
            p.runtime_dir
        ))),
        Some(PythonProbe::Found(p)) if p.jupyter_client.is_some() => match p.kernel(&settings.remote_kernel_name) {
            Some(spec) => Ok(Some(spec.clone())),
            None => Err(Error::Remote(format!(
                "remote kernel '{}' not found on '{alias}' (available: {}); fix --remote-kernel-name",
                settings.remote_kernel_name,
                p.kernel_names()
            ))),
        },
        Some(PythonProbe::Found(p)) => Err(Error::Remote(format!(
            "remote python {python} on '{alias}' cannot import jupyter_client ({}); install it there: {python} -m pip install jupyter_client ipykernel",
            p.jupyter_client_error.as_deref().unwrap_or("unknown error")
        ))),
        Some(PythonProbe::Broken(out)) => Err(Error::Remote(format!("remote python {python} on '{alias}' does not run: {out}"))),
        Some(PythonProbe::Directory) => Err(Error::Invalid(format!(
            "remote python {python} is a directory on '{alias}': for an environment pass --remote-python-prefix {python} (--remote-python takes the interpreter itself)"
        ))),
        Some(PythonProbe::Missing) | None => Err(Error::Remote(format!(
            "remote python {python} does not exist on '{alias}'; fix --remote-python-prefix or --remote-python"
        ))),
    }
}

/// The kernel.json for these settings. `argv` runs this very binary's launcher.
pub(crate) fn kernel_json(
    dir: &Path,
    settings: &Settings,
    remote: Option<&RemoteKernelspec>,
    display_name: Option<&str>,
    language: Option<&str>,
) -> Result<KernelJson> {
    let exe = std::env::current_exe().map_err(Error::io("cannot find the sshpyk binary's path"))?;
    let display_name = display_name.map(String::from).unwrap_or_else(|| {
        let base = remote
            .map(|r| r.display_name.as_str())
            .filter(|d| !d.is_empty())
            .unwrap_or(&settings.remote_kernel_name);
        format!("{base} ({})", settings.ssh_host_alias)
    });
    let language = language.map(String::from).or_else(|| remote.map(|r| r.language.clone())).unwrap_or_else(|| {
        tracing::warn!("the remote kernelspec's language is unknown; assuming python (pass --language to set it)");
        "python".into()
    });
    let mut spec = KernelJson {
        argv: vec![
            exe.to_string_lossy().into_owned(),
            "launch".into(),
            "--kernelspec".into(),
            dir.to_string_lossy().into_owned(),
            "{connection_file}".into(),
        ],
        display_name,
        language,
        interrupt_mode: Some(
            remote
                .and_then(|r| r.interrupt_mode.clone())
                .unwrap_or_else(|| "signal".into()),
        ),
        metadata: Default::default(),
        other: Default::default(),
    };
    spec.set_settings(settings);
    Ok(spec)
}
