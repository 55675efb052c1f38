//! Turning `add`/`edit` flags into validated settings and a kernel.json.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::SpecArgs;
use crate::error::{Error, Result};
use crate::kernelspec::{KernelJson, Settings, SETTINGS_VERSION};
use crate::mount::MountSpec;
use crate::remote::probe::{self, PythonProbe, RemoteKernelspec};
use crate::ssh::{config, Master};

pub const DEFAULT_LAUNCH_TIMEOUT: f64 = 30.0;
pub const DEFAULT_SHUTDOWN_TIMEOUT: f64 = 30.0;
/// Long enough to ride out a dropped Wi-Fi or a short sleep, short enough to reap abandoned kernels.
pub const DEFAULT_ORPHAN_TIMEOUT: f64 = 300.0;
/// `add`/`edit` never wait longer than this for the remote to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for `add`: the required flags must be there, the rest take defaults.
pub fn new_settings(args: &SpecArgs) -> Result<Settings> {
    let alias = args
        .ssh_host_alias
        .clone()
        .ok_or_else(|| missing("--ssh-host-alias ALIAS"))?;
    let kernel = args
        .remote_kernel_name
        .clone()
        .ok_or_else(|| missing("--remote-kernel-name NAME"))?;
    if args.remote_python_prefix.is_none() && args.remote_python.is_none() {
        return Err(missing(
            "--remote-python-prefix DIR (or --remote-python PATH)",
        ));
    }
    let mut settings = Settings {
        version: SETTINGS_VERSION,
        ssh_host_alias: alias,
        ssh_config: default_ssh_config()?,
        ssh: "ssh".into(),
        remote_python: String::new(),
        remote_kernel_name: kernel,
        launch_timeout: DEFAULT_LAUNCH_TIMEOUT,
        shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        orphan_timeout: DEFAULT_ORPHAN_TIMEOUT,
        mounts: Vec::new(),
        remote_sshfs: None,
        ssh_host_alias_local_on_remote: None,
        cloud_mounts: Vec::new(),
    };
    apply(&mut settings, args, false)?;
    Ok(settings)
}

fn missing(flag: &str) -> Error {
    Error::Invalid(format!("sshpyk add needs {flag}"))
}

fn default_ssh_config() -> Result<PathBuf> {
    dirs::home_dir()
        .map(|h| h.join(".ssh/config"))
        .ok_or_else(|| {
            Error::Invalid("cannot find your home directory; pass --ssh-config FILE".into())
        })
}

/// Applies exactly the given flags; `clear_mounts` empties the mounts first.
pub fn apply(settings: &mut Settings, args: &SpecArgs, clear_mounts: bool) -> Result<()> {
    if let Some(alias) = &args.ssh_host_alias {
        settings.ssh_host_alias = alias.clone();
    }
    if let Some(kernel) = &args.remote_kernel_name {
        settings.remote_kernel_name = kernel.clone();
    }
    if let Some(prefix) = &args.remote_python_prefix {
        require_remote_absolute(prefix, "--remote-python-prefix")?;
        settings.remote_python = format!("{}/bin/python", prefix.trim_end_matches('/'));
    }
    if let Some(python) = &args.remote_python {
        require_remote_absolute(python, "--remote-python")?;
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
    if clear_mounts {
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
    if let Some(alias) = &args.ssh_host_alias_local_on_remote {
        settings.ssh_host_alias_local_on_remote = Some(alias.clone()).filter(|s| !s.is_empty());
    }
    Ok(())
}

fn require_remote_absolute(path: &str, flag: &str) -> Result<()> {
    if path.starts_with('/') || path.starts_with("~/") {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{flag} '{path}' is relative; give an absolute remote path (or one starting with ~/)"
        )))
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(format!("cannot resolve {}", path.display())))
}

/// Local checks that need no network: the config file and alias, the mounts' local dirs.
pub fn validate_local(settings: &Settings) -> Result<()> {
    config::require_alias(&settings.ssh_config, &settings.ssh_host_alias)?;
    for mount in &settings.mounts {
        if !Path::new(&mount.local).is_dir() {
            return Err(Error::Invalid(format!(
                "local mount directory {} does not exist; create it or fix --mount-local-on-remote",
                mount.local
            )));
        }
    }
    Ok(())
}

/// Reads the remote kernelspec over ssh. Remote facts that prove the settings wrong are errors;
/// a host that cannot be reached now is only a warning (the kernelspec is still useful later).
pub async fn remote_kernelspec(settings: &Settings) -> Result<Option<RemoteKernelspec>> {
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
        tokio::time::timeout_at(deadline, probe::probe(&master, &[&settings.remote_python]))
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
    match facts.pythons.get(python) {
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
        Some(PythonProbe::Missing) | None => Err(Error::Remote(format!(
            "remote python {python} does not exist on '{alias}'; fix --remote-python-prefix or --remote-python"
        ))),
    }
}

/// The kernel.json for these settings. `argv` runs this very binary's launcher.
pub fn kernel_json(
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
