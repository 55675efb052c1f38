//! `sshpyk mount`: a remote directory mounted on this machine with the local sshfs, through the
//! alias's ControlMaster (or, with `--direct`, a connection of sshfs's own), for as long as a
//! subshell or the foreground command runs.
//!
//! Flow: check the tools and the mount point → the master → sshfs (`-f`, our child, SIGTERM on
//! our death, `auto_unmount`) → wait for the mount → hold (subshell or signals) → unmount,
//! lazily when busy → end sshfs → remove what we created. A SIGKILLed sshpyk takes sshfs along
//! and `auto_unmount` removes the mount; a mount point it created stays (empty) until the next
//! `sshpyk list` or `sshpyk mount` sweeps it.

mod options;
mod registry;
mod sshfs;
mod subshell;
mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

pub(crate) use options::OPTIONS_HELP;
pub(crate) use registry::{active, ActiveMount};

use crate::error::{Error, Result};
use crate::ssh::{config, Master};
use options::{Route, SshfsCommand};
use sshfs::{Exited, Sshfs};
use table::UnmountError;

/// How long the mount may take through a master (no prompt can be involved).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// What `sshpyk mount` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct MountRequest {
    pub(crate) ssh: String,
    pub(crate) ssh_config: PathBuf,
    pub(crate) alias: String,
    /// Remote directory; `None` for the home directory.
    pub(crate) remote_path: Option<String>,
    pub(crate) mountpoint: PathBuf,
    pub(crate) foreground: bool,
    pub(crate) direct: bool,
    pub(crate) options: Vec<String>,
    pub(crate) ssh_verbose: bool,
}

impl MountRequest {
    /// `alias:path` as sshfs takes it: sftp paths without a leading `/` are relative to the
    /// remote home, which sftp knows and `~` does not.
    fn source(&self) -> String {
        let path = match self.remote_path.as_deref() {
            None | Some("~") | Some("~/") => "",
            Some(p) => p.strip_prefix("~/").unwrap_or(p),
        };
        format!("{}:{path}", self.alias)
    }

    /// `alias:path` as the user reads it.
    fn label(&self) -> String {
        format!(
            "{}:{}",
            self.alias,
            self.remote_path.as_deref().unwrap_or("~")
        )
    }
}

/// Mounts, holds the mount while the subshell (or foreground wait) lasts, and cleans up.
/// Returns the exit status: the subshell's, or 0 after Ctrl+C/SIGTERM in the foreground.
pub(crate) async fn mount(request: MountRequest) -> Result<i32> {
    let mut signals = Signals::new()?;
    // Sweeps what a SIGKILLed `sshpyk mount` left.
    let _ = registry::active();
    check_tools()?;
    config::require_alias(&request.ssh_config, &request.alias)?;
    let (mountpoint, created) = prepare_mountpoint(&request.mountpoint)?;
    let mountpoint = CreatedDir {
        path: mountpoint,
        created,
    };
    let route = if request.direct {
        Route::Direct
    } else {
        let master = Master::for_alias(
            &request.ssh,
            &request.ssh_config,
            &request.alias,
            request.ssh_verbose,
        )
        .await?;
        master.ensure(Instant::now() + MOUNT_TIMEOUT).await?;
        Route::Master {
            control_path: master.control_path().to_string(),
        }
    };
    let sshfs = tokio::select! {
        sshfs = start_sshfs(&request, &mountpoint.path, route) => sshfs?,
        () = signals.ending() => {
            // The dropped sshfs was killed; its auto_unmount takes a mount that made it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if table::find(&mountpoint.path).is_some() {
                let _ = table::unmount(&mountpoint.path, true).await;
            }
            return Ok(130);
        }
    };
    let mode = if request.foreground {
        "foreground"
    } else {
        "subshell"
    };
    let record = registry::Record::write(&ActiveMount {
        pid: std::process::id(),
        alias: request.alias.clone(),
        remote_path: request.remote_path.clone().unwrap_or_else(|| "~".into()),
        mountpoint: mountpoint.path.clone(),
        created_mountpoint: mountpoint.created,
        mode: mode.into(),
    });
    let mut held = Held {
        sshfs: Some(sshfs),
        mountpoint: &mountpoint.path,
    };
    let outcome = match record {
        Ok(_) if request.foreground => held.foreground(&request.label(), &mut signals).await,
        Ok(_) => held.subshell(&request.label(), &mut signals).await,
        Err(e) => Err(e),
    };
    held.release().await;
    drop(mountpoint);
    outcome
}

/// `sshpyk mount --umount [--lazy] MOUNTPOINT`.
pub(crate) async fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mountpoint = table::resolve(mountpoint)?;
    let shown = mountpoint.display();
    if table::find(&mountpoint).is_none() {
        return Err(Error::Invalid(format!(
            "{shown} is not a mount point; nothing to unmount"
        )));
    }
    match table::unmount(&mountpoint, lazy).await {
        Ok(()) => {}
        Err(UnmountError::Busy) => {
            return Err(Error::Local(format!(
                "{shown} is busy (used by {}); close those, or detach it now with `sshpyk mount --umount --lazy {shown}`",
                holders_text(&mountpoint)
            )))
        }
        Err(e) => return Err(unmount_error(&mountpoint, e)),
    }
    // The record of a killed `sshpyk mount` there goes, and the mount point it created.
    let _ = registry::active();
    tracing::info!("unmounted {shown}");
    Ok(())
}

/// sshfs, fusermount and a usable /dev/fuse, or the one line that says what to install.
fn check_tools() -> Result<()> {
    if !on_path("sshfs") {
        return Err(Error::Local(
            "sshfs is not installed; install it (Debian/Ubuntu: apt install sshfs; Fedora: dnf install fuse-sshfs)".into(),
        ));
    }
    if cfg!(target_os = "linux") {
        if !on_path("fusermount3") && !on_path("fusermount") {
            return Err(Error::Local(
                "fusermount3 is not installed; install FUSE 3 (Debian/Ubuntu: apt install fuse3)"
                    .into(),
            ));
        }
        check_fuse_device()?;
    }
    Ok(())
}

fn check_fuse_device() -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let device = Path::new("/dev/fuse");
    let fix = "load the fuse module (modprobe fuse) or, in a container, give it /dev/fuse";
    let is_fuse = std::fs::metadata(device).is_ok_and(|m| {
        m.file_type().is_char_device()
            && nix::sys::stat::major(m.rdev()) == 10
            && nix::sys::stat::minor(m.rdev()) == 229
    });
    if !is_fuse {
        return Err(Error::Local(format!(
            "/dev/fuse is missing or not the FUSE device; {fix}"
        )));
    }
    // Others go through the setuid fusermount3, which opens the device with their own rights.
    if nix::unistd::geteuid().is_root() {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
        {
            return Err(Error::Local(format!(
                "/dev/fuse cannot be opened ({e}); {fix}"
            )));
        }
    } else if nix::unistd::access(
        device,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_err()
    {
        return Err(Error::Local(
            "/dev/fuse is not readable and writable by you; make it mode 0666 (chmod 0666 /dev/fuse, as udev does on most systems)".into(),
        ));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The mount point resolved, and whether sshpyk created it. It must be an empty directory that
/// nothing is mounted on; a missing one is created (its parent must exist).
fn prepare_mountpoint(given: &Path) -> Result<(PathBuf, bool)> {
    let path = table::resolve(given)?;
    let shown = path.display();
    if let Some(entry) = table::find(&path) {
        return Err(if table::is_dead(&path) {
            Error::Invalid(format!(
                "{shown} holds a dead mount (Transport endpoint is not connected); remove it with `sshpyk mount --umount {shown}`"
            ))
        } else {
            Error::Invalid(format!(
                "{shown} is already mounted ({} {}); unmount it first (`sshpyk mount --umount {shown}`) or choose another directory",
                entry.fstype, entry.source
            ))
        });
    }
    match std::fs::read_dir(&path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Invalid(format!(
                    "mount point {shown} is not empty; choose an empty or new directory (a mount would hide its files)"
                )));
            }
            Ok((path.canonicalize().unwrap_or(path), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(&path)
                .map_err(|e| Error::Local(format!("cannot create mount point {shown}: {e}")))?;
            Ok((path, true))
        }
        Err(e) => Err(Error::Invalid(format!(
            "mount point {shown} is not a usable directory ({e}); give an empty directory"
        ))),
    }
}

/// A mount point sshpyk created, removed when dropped.
struct CreatedDir {
    path: PathBuf,
    created: bool,
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Starts sshfs and waits for its mount; a refused `allow_other` is retried without it.
async fn start_sshfs(request: &MountRequest, mountpoint: &Path, route: Route) -> Result<Sshfs> {
    let mut options = request.options.clone();
    loop {
        let command = SshfsCommand {
            ssh: &request.ssh,
            ssh_config: &request.ssh_config,
            source: request.source(),
            mountpoint,
            route: route.clone(),
            user_options: &options,
        };
        let mut sshfs = Sshfs::spawn(&command.args(), mountpoint, !request.direct)
            .map_err(Error::io("cannot run sshfs"))?;
        let deadline = (!request.direct).then(|| Instant::now() + MOUNT_TIMEOUT);
        match sshfs.mounted(deadline).await {
            Ok(()) => {
                tracing::info!("mounted {} on {}", request.label(), mountpoint.display());
                return Ok(sshfs);
            }
            Err(Some(exited))
                if options::asks_for(&options, "allow_other") && refused_allow_other(&exited) =>
            {
                tracing::warn!(
                    "FUSE refused allow_other (user_allow_other is not set in /etc/fuse.conf); mounting without it"
                );
                options = options::without(&options, "allow_other");
            }
            Err(Some(exited)) => return Err(mount_failure(request, &exited)),
            Err(None) => {
                sshfs.finish().await;
                return Err(Error::Timeout {
                    what: format!("mounting {}", request.label()),
                    secs: MOUNT_TIMEOUT.as_secs_f64(),
                    hint: "check the connection, or run with -v to see sshfs's output".into(),
                });
            }
        }
    }
}

fn refused_allow_other(exited: &Exited) -> bool {
    exited
        .stderr
        .iter()
        .any(|l| l.contains("allow_other") && l.contains("user_allow_other"))
}

/// sshfs's own last words made into one line that names the fix.
fn mount_failure(request: &MountRequest, exited: &Exited) -> Error {
    let label = request.label();
    let alias = &request.alias;
    let said = |needle: &str| exited.stderr.iter().any(|l| l.contains(needle));
    let last = exited
        .stderr
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| format!("sshfs exited with {}", exited.status));
    if said("No such file or directory") && said(&request.source()) {
        Error::Remote(format!(
            "remote directory {label} does not exist; create it or fix -r/--remote-path"
        ))
    } else if said("Not a directory") {
        Error::Remote(format!(
            "remote path {label} is not a directory; give a directory with -r/--remote-path"
        ))
    } else if said("/dev/fuse") {
        Error::Local(format!("FUSE is not usable here: {last}"))
    } else if said("Permission denied") || said("Host key verification failed") {
        Error::Ssh(format!(
            "ssh to '{alias}' failed for sshfs: {last}; connect once by hand with `{} -F {} {alias}` to check keys and host key",
            request.ssh,
            request.ssh_config.display()
        ))
    } else {
        Error::Ssh(format!("sshfs could not mount {label}: {last}"))
    }
}

/// A live mount and the sshfs that serves it.
struct Held<'a> {
    sshfs: Option<Sshfs>,
    mountpoint: &'a Path,
}

impl Held<'_> {
    async fn subshell(&mut self, label: &str, signals: &mut Signals) -> Result<i32> {
        let shell = std::env::var_os("SHELL")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        let scratch = tempfile::Builder::new()
            .prefix("mount-shell-")
            .tempdir_in(crate::runtime::dir()?)
            .map_err(Error::io("cannot create a scratch dir in the runtime dir"))?;
        eprintln!(
            "sshpyk: {label} is mounted on {}; exit this shell (exit or Ctrl+D) to unmount",
            self.mountpoint.display()
        );
        subshell::run(&shell, label, self.mountpoint, scratch.path(), signals).await
    }

    /// Until Ctrl+C, SIGTERM or SIGHUP (0), or until sshfs ends by itself (an error).
    async fn foreground(&mut self, label: &str, signals: &mut Signals) -> Result<i32> {
        eprintln!(
            "sshpyk: {label} is mounted on {}; Ctrl+C to unmount",
            self.mountpoint.display()
        );
        let sshfs = self.sshfs.as_mut().expect("sshfs runs while held");
        tokio::select! {
            () = signals.ending() => Ok(0),
            exited = sshfs.exited() => {
                let last = exited.stderr.last().cloned().unwrap_or_else(|| exited.status.to_string());
                Err(Error::Ssh(format!(
                    "the mount of {label} ended: sshfs exited ({last}); mount again, with -o reconnect to ride out network drops"
                )))
            }
        }
    }

    /// Unmounts (lazily, saying who holds it, when busy) and ends sshfs.
    async fn release(&mut self) {
        let shown = self.mountpoint.display();
        if table::find(self.mountpoint).is_some() {
            match table::unmount(self.mountpoint, false).await {
                Ok(()) => {}
                Err(UnmountError::Busy) => {
                    tracing::warn!(
                        "{shown} is still in use by {}; detached it lazily: their open files and directories under it stop working",
                        holders_text(self.mountpoint)
                    );
                    if let Err(e) = table::unmount(self.mountpoint, true).await {
                        tracing::warn!("{}", unmount_error(self.mountpoint, e));
                    }
                }
                Err(e) => tracing::warn!("{}", unmount_error(self.mountpoint, e)),
            }
        }
        if let Some(sshfs) = self.sshfs.take() {
            sshfs.finish().await;
        }
    }
}

/// The signals that end a mount, caught from the start so that none of them leaves a mount or
/// a mount point behind. Caught, not ignored: the subshell starts with default handlers.
struct Signals {
    interrupt: Signal,
    quit: Signal,
    hangup: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        let catch =
            |kind| signal(kind).map_err(|e| Error::Local(format!("cannot handle signals: {e}")));
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            quit: catch(SignalKind::quit())?,
            hangup: catch(SignalKind::hangup())?,
            terminate: catch(SignalKind::terminate())?,
        })
    }

    /// Ctrl+C, SIGTERM or SIGHUP.
    async fn ending(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

fn holders_text(mountpoint: &Path) -> String {
    let holders = table::holders(mountpoint);
    if holders.is_empty() {
        "processes sshpyk cannot see".into()
    } else {
        holders.join(", ")
    }
}

fn unmount_error(mountpoint: &Path, e: UnmountError) -> Error {
    let shown = mountpoint.display();
    match e {
        UnmountError::NoHelper => Error::Local(format!(
            "cannot unmount {shown}: none of fusermount3, fusermount, umount is installed; install fuse3"
        )),
        UnmountError::Busy => Error::Local(format!("{shown} is busy")),
        UnmountError::Failed(message) => {
            Error::Local(format!("cannot unmount {shown}: {message}"))
        }
    }
}
