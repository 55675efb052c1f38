//! `sshpyk mounts add|list|remove`: a kernel's mounts in its kernelspec (so later starts have
//! them) and, at once, on every running launcher of that kernelspec (over their control sockets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{MountsAddArgs, MountsCommand, MountsListArgs, MountsRemoveArgs};
use crate::control::{
    self, ControlReply, ControlRequest, KernelStatus, MountKind, MountState, MountStatus,
    DESCRIBE_WAIT,
};
use crate::error::{Error, Result};
use crate::jupyter::kernelspec::{self, Kernelspec};
use crate::mounts::cloud_on_remote::backend::{self, RAW_CONFIG};
use crate::mounts::cloud_on_remote::{secrets, Backend, CloudMount};
use crate::mounts::has_mount_at;
use crate::mounts::remote_on_local::{self, ActiveMount};
use crate::settings::Settings;

/// How long a live mount may take: rclone's pre-flight listing and the mount itself.
const CHANGE_WAIT: Duration = Duration::from_secs(120);

pub(crate) async fn run(command: MountsCommand) -> Result<()> {
    match command {
        MountsCommand::Add(args) => add(args).await,
        MountsCommand::List(args) => list(args).await,
        MountsCommand::Remove(args) => remove(args).await,
    }
}

fn sshpyk_kernel(name: &str) -> Result<(Kernelspec, Settings)> {
    let found = kernelspec::find(name)?;
    let settings = found.sshpyk_settings("only sshpyk kernels have mounts")?;
    Ok((found, settings))
}

fn save(found: &Kernelspec, settings: &Settings) -> Result<()> {
    let mut spec = found.spec.clone();
    spec.set_settings(settings);
    kernelspec::rewrite(&found.dir, &spec)
}

/// The running launchers of this kernelspec.
async fn running_of(found: &Kernelspec) -> Result<Vec<(control::Launcher, KernelStatus)>> {
    let dir = canonical(&found.dir);
    Ok(control::running(DESCRIBE_WAIT)
        .await?
        .into_iter()
        .filter(|(_, status)| canonical(&status.kernelspec_dir) == dir)
        .collect())
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn parse_settings(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| Error::Invalid(format!("--set '{pair}' is not KEY=VALUE")))
        })
        .collect()
}

/// The mount and its secrets from the flags; nothing is written yet.
fn mount_from(args: &MountsAddArgs) -> Result<(CloudMount, BTreeMap<String, String>)> {
    let remote = &args.remote_path;
    if !(remote.starts_with('/') || remote.starts_with("~/")) || remote == "/" {
        return Err(Error::Invalid(format!(
            "remote path '{remote}' must be absolute (or start with ~/) and not /"
        )));
    }
    for flag in &args.rclone_flags {
        backend::check_rclone_flag(flag)?;
    }
    let (backend, settings, secrets) = match (&args.rclone_config, args.backend) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Invalid(format!(
                    "cannot read --rclone-config {}: {e}",
                    path.display()
                ))
            })?;
            let sections = backend::config_sections(&text);
            let section = args.source.split_once(':').map(|(s, _)| s);
            match section {
                Some(s) if sections.iter().any(|n| n == s) => {}
                _ => {
                    return Err(Error::Invalid(format!(
                    "--source '{}' must be REMOTE:PATH with REMOTE a section of {} (it has: {})",
                    args.source,
                    path.display(),
                    if sections.is_empty() {
                        "none".into()
                    } else {
                        sections.join(", ")
                    }
                )))
                }
            }
            let secrets = BTreeMap::from([(RAW_CONFIG.to_string(), text)]);
            (Backend::Rclone, BTreeMap::new(), secrets)
        }
        (None, Some(backend)) => {
            let settings = parse_settings(&args.settings)?;
            CloudMount::check_settings(backend, &settings)?;
            let creds = match &args.creds {
                Some(arg) => secrets::read_creds_arg(arg)?,
                None => BTreeMap::new(),
            };
            (backend, settings, CloudMount::read_creds(backend, creds)?)
        }
        (None, None) => {
            return Err(Error::Invalid(
                "mounts add needs --backend or --rclone-config".into(),
            ))
        }
    };
    let mount = CloudMount {
        remote: remote.clone(),
        backend,
        source: args.source.clone(),
        settings,
        rw: args.rw,
        rclone_flags: args.rclone_flags.clone(),
        secrets: String::new(),
    };
    // Rendered once now, so that missing keys are refused before anything is written.
    mount.render(&secrets)?;
    Ok((mount, secrets))
}

async fn add(args: MountsAddArgs) -> Result<()> {
    let (found, mut settings) = sshpyk_kernel(&args.kernel_name)?;
    let name = &found.name;
    let (mut mount, secrets_map) = mount_from(&args)?;
    let remote = &mount.remote;
    if has_mount_at(remote, &settings.mounts, &settings.cloud_mounts) {
        return Err(Error::Invalid(format!(
            "kernel '{name}' already has a mount at {remote}; remove it first (`sshpyk mounts remove --kernel-name {name} {remote}`)"
        )));
    }
    mount.secrets = secrets::store(name, &secrets_map)?;
    let before = settings.clone();
    settings.cloud_mounts.push(mount.clone());
    if let Err(e) = save(&found, &settings) {
        secrets::remove(&mount.secrets);
        return Err(e);
    }
    let mut done = Vec::new();
    let mut failures = Vec::new();
    let running = match running_of(&found).await {
        Ok(running) => running,
        Err(e) => {
            failures.push(e.to_string());
            Vec::new()
        }
    };
    for (launcher, _) in &running {
        let request = ControlRequest::AddCloudMount {
            mount: mount.clone(),
        };
        match control::ask(&launcher.path, &request, CHANGE_WAIT).await {
            Ok(ControlReply::Done { message }) => {
                println!("{message}");
                done.push(launcher);
            }
            Ok(ControlReply::Failed { message }) => failures.push(message),
            Ok(ControlReply::Status(_)) => failures.push(format!(
                "launcher {} answered with its status",
                launcher.pid
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        // All or nothing: the kernelspec and the kernels that took it go back as they were. A
        // kernel that cannot give it back (reconnecting, timed out) is named: it keeps it.
        for launcher in done {
            let request = ControlRequest::RemoveMount {
                remote: remote.clone(),
            };
            match control::ask(&launcher.path, &request, CHANGE_WAIT).await {
                Ok(ControlReply::Done { .. }) => {}
                Ok(ControlReply::Failed { message }) => {
                    failures.push(kept_by(launcher.pid, remote, &message))
                }
                Ok(ControlReply::Status(_)) => {
                    failures.push(kept_by(launcher.pid, remote, "it answered with its status"))
                }
                Err(e) => failures.push(kept_by(launcher.pid, remote, &e.to_string())),
            }
        }
        save(&found, &before)?;
        secrets::remove(&mount.secrets);
        return Err(Error::Remote(failures.join("; ")));
    }
    println!(
        "added {} at {remote} ({}) to kernel '{name}'; {}",
        mount.describe(),
        if mount.rw { "read-write" } else { "read-only" },
        match running.len() {
            0 => "it is mounted at every start".to_string(),
            n => format!("mounted now on {n} running kernel(s) and at every start"),
        }
    );
    Ok(())
}

async fn remove(args: MountsRemoveArgs) -> Result<()> {
    let (found, mut settings) = sshpyk_kernel(&args.kernel_name)?;
    let (name, remote) = (&found.name, &args.remote_path);
    let gone_secrets: Vec<String> = settings
        .cloud_mounts
        .iter()
        .filter(|m| &m.remote == remote)
        .map(|m| m.secrets.clone())
        .collect();
    let configured = has_mount_at(remote, &settings.mounts, &settings.cloud_mounts);
    let mut live = 0;
    let mut kept = Vec::new();
    for (launcher, status) in running_of(&found).await? {
        if !status.mounts.iter().any(|m| &m.remote == remote) {
            continue;
        }
        let request = ControlRequest::RemoveMount {
            remote: remote.clone(),
        };
        match control::ask(&launcher.path, &request, CHANGE_WAIT).await {
            Ok(ControlReply::Done { message }) => {
                println!("{message}");
                live += 1;
            }
            Ok(ControlReply::Failed { message }) => {
                kept.push(kept_by(launcher.pid, remote, &message))
            }
            Ok(ControlReply::Status(_)) => {
                kept.push(kept_by(launcher.pid, remote, "it answered with its status"))
            }
            Err(e) => kept.push(kept_by(launcher.pid, remote, &e.to_string())),
        }
    }
    if !configured && live == 0 {
        return Err(Error::Invalid(format!(
            "kernel '{name}' has no mount at {remote}; `sshpyk mounts list --kernel-name {name}` shows its mounts"
        )));
    }
    settings.mounts.retain(|m| &m.remote != remote);
    settings.cloud_mounts.retain(|m| &m.remote != remote);
    save(&found, &settings)?;
    // A kernel that keeps the mount needs them no more: its supervisor has its own copy.
    for file in gone_secrets {
        secrets::remove(&file);
    }
    if !kept.is_empty() {
        return Err(Error::Remote(format!(
            "removed the mount at {remote} from kernel '{name}' for later starts, but {}; run `sshpyk mounts remove --kernel-name {name} {remote}` again once it is back",
            kept.join("; ")
        )));
    }
    println!("removed the mount at {remote} from kernel '{name}'");
    Ok(())
}

/// Says that the kernel of launcher `pid` still has the mount at `remote`, and why.
fn kept_by(pid: u32, remote: &str, why: &str) -> String {
    format!("the running kernel of launcher {pid} still has {remote} ({why})")
}

/// One kernelspec's mounts: as configured, and as each running kernel has them.
#[derive(Debug, Serialize)]
struct KernelMounts {
    kernel_name: String,
    kernelspec_dir: PathBuf,
    configured: Vec<MountStatus>,
    running: Vec<RunningMounts>,
}

#[derive(Debug, Serialize)]
struct RunningMounts {
    launcher_pid: u32,
    remote_pid: u32,
    mounts: Vec<MountStatus>,
}

#[derive(Debug, Serialize)]
struct MountsList {
    kernels: Vec<KernelMounts>,
    /// Remote directories mounted on this machine (`sshpyk mount`).
    remote_on_local: Vec<ActiveMount>,
}

fn configured(settings: &Settings) -> Vec<MountStatus> {
    let state = MountState::Configured;
    let local = settings
        .mounts
        .iter()
        .map(|m| MountStatus::local(m, state, None));
    let cloud = settings
        .cloud_mounts
        .iter()
        .map(|m| MountStatus::cloud(m, state, None, None));
    local.chain(cloud).collect()
}

async fn list(args: MountsListArgs) -> Result<()> {
    let kernels: Vec<(Kernelspec, Settings)> = match &args.kernel_name {
        Some(name) => vec![sshpyk_kernel(name)?],
        None => kernelspec::find_all()?
            .into_iter()
            .filter_map(|k| match k.spec.settings() {
                Some(Ok(settings)) => Some((k, settings)),
                _ => None,
            })
            .collect(),
    };
    let running = control::running(DESCRIBE_WAIT).await?;
    let mut out = MountsList {
        kernels: Vec::new(),
        remote_on_local: remote_on_local::active(),
    };
    for (found, settings) in kernels {
        let dir = canonical(&found.dir);
        let running = running
            .iter()
            .filter(|(_, s)| canonical(&s.kernelspec_dir) == dir)
            .map(|(_, s)| RunningMounts {
                launcher_pid: s.launcher_pid,
                remote_pid: s.remote_pid,
                mounts: s.mounts.clone(),
            })
            .collect();
        out.kernels.push(KernelMounts {
            kernel_name: found.name.clone(),
            kernelspec_dir: found.dir.clone(),
            configured: configured(&settings),
            running,
        });
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
        return Ok(());
    }
    // As `list` does: an empty answer is said, not left blank.
    if out.kernels.is_empty() && out.remote_on_local.is_empty() {
        println!("(none)");
    }
    for kernel in &out.kernels {
        println!("{}", kernel.kernel_name);
        if kernel.configured.is_empty() {
            println!("  (no mounts)");
        }
        for mount in &kernel.configured {
            println!("  {}", mount_line(mount));
        }
        for run in &kernel.running {
            println!(
                "  running kernel {} (launcher {}):",
                run.remote_pid, run.launcher_pid
            );
            for mount in &run.mounts {
                println!("    {}", mount_line(mount));
            }
        }
    }
    if !out.remote_on_local.is_empty() {
        println!("remote dirs on this machine");
        for mount in &out.remote_on_local {
            println!("  {}", mount.describe());
        }
    }
    Ok(())
}

pub(crate) fn mount_line(mount: &MountStatus) -> String {
    let kind = match mount.kind {
        MountKind::LocalOnRemote => "local dir",
        MountKind::Cloud => "cloud",
    };
    let mut line = format!(
        "{}  {kind}  {}  {}  {}",
        mount.remote,
        mount.source,
        if mount.read_only { "ro" } else { "rw" },
        mount.state
    );
    if let Some(error) = &mount.error {
        line.push_str(&format!(" ({error})"));
    }
    if let Some(detail) = &mount.detail {
        line.push_str(&format!(" ({detail})"));
    }
    line
}
