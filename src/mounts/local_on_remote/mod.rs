//! Mounts: local directories on the remote for the kernel's lifetime
//! (`--mount-local-on-remote "/local:/remote[:options]"`).
//!
//! A project-sized tree (up to [`sync::MAX_FILES`] files and [`sync::MAX_BYTES`], excludes left
//! out) becomes a synchronised copy on the remote's disk ([`sync`]): imports and reads at disk
//! speed however far the remote is. A bigger tree, or one whose spec says `lazy`, is mounted
//! as below: nothing is copied, every access asks this side. `sync` forces the copy.
//!
//! # How (lazy mounts)
//!
//! For each mount the launcher opens one ssh session over the ControlMaster it already uses for
//! the kernel. That session runs a small POSIX sh wrapper on the remote (see [`wrapper`]) which
//! checks sshfs and FUSE, prepares the mount point (creating it when missing, refusing a
//! non-empty directory that is not a mount, cleaning a dead FUSE mount left by a crash), then
//! runs `sshfs -f -o passive,<user options> :/ <mount point>`. With `passive`, sshfs speaks
//! SFTP over its stdin and stdout, which are the session's: on this side they are served by an
//! SFTP server inside the launcher ([`sftp`], on the `russh-sftp` crate). When sshfs ends, for
//! whatever reason, the wrapper unmounts and removes the mount point if it created it.
//!
//! # Why not a local sshd and a reverse tunnel
//!
//! The original design ran an sftp-only `sshd` on this machine, with an ephemeral key pair, and a
//! reverse forward from the remote to it. None of that is needed: the connection the kernel
//! already rides is authenticated and encrypted, and a session channel is a byte stream in both
//! directions. So there is no listening port (nothing for other local or remote users to connect
//! to), no key pair to make, hand over and delete, no sshd binary or config, and nothing that
//! depends on the remote's ssh config. One ssh channel per mount, and its life is the
//! launcher's.
//!
//! # Confinement
//!
//! Every path the remote sends is resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to a handle of the exported
//! directory ([`export`]): `..`, absolute paths and symlinks pointing out (even with sshfs's
//! `follow_symlinks`) fail; `/` is the export's root. `ro` among the options makes the server
//! refuse every change (SSH_FX_PERMISSION_DENIED), whatever the remote's sshfs does; it is also
//! passed on to sshfs. This needs Linux ≥ 5.6; elsewhere the default mode is unavailable and
//! `list` says so.
//!
//! # Lifetime
//!
//! Mounts are made after the connection is up and before the kernel starts. A normal stop ends
//! each SFTP stream: sshfs sees end of file, the wrapper unmounts, says so, and the launcher waits
//! (a few seconds at most) for that. Each mount's session is opened through the master's mux
//! protocol, like the kernel's: when the launcher is killed, the master closes its sessions, and
//! each wrapper cleans up by itself. A server that refuses one more session gets the mount on
//! another connection to the host.
//!
//! `--ssh-host-alias-local-on-remote ALIAS` (compatibility with the original tool) skips the
//! local server: the remote's sshfs connects back with `ALIAS` from the remote's own ssh config
//! (`reconnect`, `ServerAliveInterval=15`); the same wrapper prepares and cleans up. sshpyk does
//! not confine that mode.

#[cfg(target_os = "linux")]
mod export;
mod facts;
#[cfg(target_os = "linux")]
mod handle_budget;
#[cfg(target_os = "linux")]
mod names;
#[cfg(target_os = "linux")]
mod serve;
#[cfg(target_os = "linux")]
mod sftp;
mod spec;
#[cfg(target_os = "linux")]
mod sync;
mod wrapper;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::OwnedFd;

use crate::ssh::master::retry_on_session_refused;
use crate::ssh::mux::MuxChannel;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub(crate) use facts::{local_facts, mode, probe_remote, Mode};
pub(crate) use spec::MountSpec;
pub(crate) use wrapper::RemoteMountFacts;

use crate::error::{Error, Result};
use crate::ssh::Master;
use wrapper::{Source, WrapperEvent};

/// How long a stop waits for the remote to confirm the unmount.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The mounts of one running kernel. Dropping it without [`Mounts::stop`] still ends every
/// session (the master closes them), and the remote wrappers then clean up by themselves.
#[derive(Default)]
pub(crate) struct Mounts {
    /// Every mount of the kernel, kept for its whole life: a remount that fails is tried again
    /// at the next reconnection.
    planned: Vec<Planned>,
    /// The mounts made since the last (re)connection.
    active: Vec<Active>,
    #[cfg(target_os = "linux")]
    synced: Vec<sync::SyncMount>,
}

struct Planned {
    spec: MountSpec,
    /// A synced copy: what both sides last held, kept across reconnections.
    #[cfg(target_os = "linux")]
    sync: Option<sync::Base>,
    /// Opened once, at the first mount, and served at every remount: what the path leads to
    /// later (the remote may replace a directory inside another, writable, export by a
    /// symlink) never changes what this mount exposes.
    export: Option<LocalExport>,
}

#[cfg(target_os = "linux")]
type LocalExport = Arc<export::Export>;
#[cfg(not(target_os = "linux"))]
type LocalExport = ();

struct Active {
    spec: MountSpec,
    /// Dropping it ends the session.
    channel: MuxChannel,
    events: mpsc::Receiver<WrapperEvent>,
    /// Set once the launcher ends the mount: its end is then no surprise.
    stopping: Arc<AtomicBool>,
    /// Compatibility mode: closing the session's stdin tells the wrapper to unmount.
    stdin: Option<OwnedFd>,
    /// Default mode: ends the SFTP stream (and so sshfs's input).
    stop: Option<oneshot::Sender<()>>,
    /// Lines the session printed besides events, for error messages.
    output: Vec<String>,
}

/// What mounting needs of a kernel's settings besides the specs, which change while the kernel
/// runs (built by `Settings::mount_settings`, so that mounts do not depend on the settings model,
/// which holds their specs).
pub(crate) struct MountSettings<'a> {
    pub(crate) ssh_host_alias: &'a str,
    pub(crate) remote_sshfs: Option<&'a str>,
    pub(crate) ssh_host_alias_local_on_remote: Option<&'a str>,
    pub(crate) launch_timeout: f64,
    /// The kernel's remote python and init snippet: a synced copy's agent runs there.
    pub(crate) remote_python: &'a str,
    pub(crate) remote_init: Option<&'a str>,
}

impl Mounts {
    /// Makes every mount of `specs` on the remote, before `deadline`; all or nothing.
    pub(crate) async fn start(
        master: &Master,
        specs: &[MountSpec],
        settings: &MountSettings<'_>,
        deadline: Instant,
    ) -> Result<Mounts> {
        let source = source(settings);
        // Every local directory first: nothing starts on the remote when one is missing.
        let mut planned = Vec::new();
        for spec in specs {
            let export = local_export(spec, &source)?;
            #[cfg(target_os = "linux")]
            let sync = match (&export, sync::wanted(spec)?) {
                (Some(_), true) => Some(sync::Base::default()),
                _ => None,
            };
            planned.push(Planned {
                spec: spec.clone(),
                export,
                #[cfg(target_os = "linux")]
                sync,
            });
        }
        let mut mounts = Mounts {
            planned,
            ..Mounts::default()
        };
        mounts.mount_all(master, settings, deadline, false).await?;
        Ok(mounts)
    }

    async fn mount_all(
        &mut self,
        master: &Master,
        settings: &MountSettings<'_>,
        deadline: Instant,
        takeover: bool,
    ) -> Result<()> {
        #[cfg(target_os = "linux")]
        {
            self.synced = sync_all(&self.planned, master, settings, deadline).await?;
        }
        match mount_all(&self.planned, master, settings, deadline, takeover).await {
            Ok(active) => self.active = active,
            Err(e) => {
                self.stop_synced().await;
                return Err(e);
            }
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    async fn stop_synced(&mut self) {
        for synced in std::mem::take(&mut self.synced) {
            synced.stop(STOP_GRACE).await;
        }
    }

    #[cfg(not(target_os = "linux"))]
    async fn stop_synced(&mut self) {}

    /// After a reconnection: the old channels are dead; mount everything again, taking over
    /// the mount points from this kernel's earlier sshfs processes. After a failure nothing is
    /// mounted, and the next reconnection tries again.
    pub(crate) async fn remount(
        &mut self,
        master: &Master,
        settings: &MountSettings<'_>,
        deadline: Instant,
    ) -> Result<()> {
        if self.planned.is_empty() {
            return Ok(());
        }
        stop_all(std::mem::take(&mut self.active)).await;
        // Their sessions died with the connection: nothing to flush through them. The next
        // copies start from the kept base, so what changed on either side meanwhile is synced.
        #[cfg(target_os = "linux")]
        self.synced.clear();
        self.mount_all(master, settings, deadline, true).await
    }

    /// Every mount of the kernel, mounted now or not.
    pub(crate) fn specs(&self) -> impl Iterator<Item = &MountSpec> {
        self.planned.iter().map(|p| &p.spec)
    }

    /// Each planned mount, whether it is mounted now (made since the last connection, its
    /// session still open), and for a synced copy what it is doing.
    pub(crate) fn states(&self) -> Vec<(&MountSpec, bool, Option<String>)> {
        self.planned
            .iter()
            .map(|p| {
                let up = self
                    .active
                    .iter()
                    .any(|a| a.spec.remote == p.spec.remote && !a.events.is_closed());
                #[cfg(target_os = "linux")]
                if let Some(synced) = self.synced.iter().find(|s| s.spec.remote == p.spec.remote) {
                    let state = synced.state();
                    return (&p.spec, state.up, Some(state.describe()));
                }
                (&p.spec, up, None)
            })
            .collect()
    }

    /// Ends the mount at `remote` for good (`sshpyk mounts remove` on a running kernel);
    /// whether there was one.
    pub(crate) async fn remove(&mut self, remote: &str) -> bool {
        let before = self.planned.len();
        self.planned.retain(|p| p.spec.remote != remote);
        let (gone, kept) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| a.spec.remote == remote);
        self.active = kept;
        stop_all(gone).await;
        #[cfg(target_os = "linux")]
        {
            let (gone, kept) = std::mem::take(&mut self.synced)
                .into_iter()
                .partition(|s| s.spec.remote == remote);
            self.synced = kept;
            for synced in gone {
                synced.stop(STOP_GRACE).await;
            }
        }
        self.planned.len() != before
    }

    /// Unmounts everything (a synced copy brings the kernel's last writes back first) and
    /// waits (briefly) until the remote confirms.
    pub(crate) async fn stop(mut self) {
        self.stop_synced().await;
        stop_all(self.active).await;
    }
}

fn source<'a>(settings: &MountSettings<'a>) -> Source<'a> {
    match settings.ssh_host_alias_local_on_remote {
        Some(back) => Source::Alias(back),
        None => Source::Passive,
    }
}

async fn mount_all(
    planned: &[Planned],
    master: &Master,
    settings: &MountSettings<'_>,
    deadline: Instant,
    takeover: bool,
) -> Result<Vec<Active>> {
    #[cfg(target_os = "linux")]
    let lazy = planned.iter().filter(|p| p.sync.is_none()).count();
    #[cfg(not(target_os = "linux"))]
    let lazy = planned.len();
    if lazy == 0 {
        return Ok(Vec::new());
    }
    tracing::info!("mounting {lazy} local dir(s) on the remote");
    let alias = settings.ssh_host_alias;
    let source = source(settings);
    let mut mounts = Vec::new();
    for p in planned {
        #[cfg(target_os = "linux")]
        if p.sync.is_some() {
            continue;
        }
        let (spec, export) = (&p.spec, &p.export);
        let line = wrapper::command_line(spec, settings.remote_sshfs, &source, takeover);
        let (_, session) = retry_on_session_refused(master, deadline, |m| {
            let line = &line;
            async move { wrapper::spawn(&m, line).await }
        })
        .await?;
        let what = format!("mount {}", spec.remote);
        let stopping = Arc::new(AtomicBool::new(false));
        let events = wrapper::read_events(session.stderr, what, stopping.clone());
        let (stdout, stdin) = (session.stdout, session.stdin);
        let mut active = Active {
            spec: spec.clone(),
            channel: session.channel,
            events,
            stopping,
            stdin: None,
            stop: None,
            output: Vec::new(),
        };
        match export {
            #[cfg(target_os = "linux")]
            Some(export) => {
                let (stop, stopped) = oneshot::channel();
                active.stop = Some(stop);
                let budget = handle_budget::HandleBudget::shared();
                serve::spawn_server(spec, stdout, stdin, export.clone(), budget, stopped)?;
            }
            _ => {
                drop(stdout);
                active.stdin = Some(stdin);
            }
        }
        mounts.push(active);
    }
    // They all progress at once; a failure tears down every one of them.
    for i in 0..mounts.len() {
        let result = tokio::time::timeout_at(deadline, mounts[i].ready(alias)).await;
        let error = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => Error::Timeout {
                what: format!(
                    "mounting {} on '{alias}' at {}",
                    mounts[i].spec.local, mounts[i].spec.remote
                ),
                secs: settings.launch_timeout,
                hint: "run the launcher with -vv to see what sshfs says, or raise --launch-timeout"
                    .into(),
            },
        };
        stop_all(mounts).await;
        return Err(error);
    }
    Ok(mounts)
}

/// Makes the synced copies of `planned`, all or nothing.
#[cfg(target_os = "linux")]
async fn sync_all(
    planned: &[Planned],
    master: &Master,
    settings: &MountSettings<'_>,
    deadline: Instant,
) -> Result<Vec<sync::SyncMount>> {
    let python = |args: &[&str]| {
        crate::ssh::init::python_command(settings.remote_python, args, settings.remote_init)
    };
    let mut synced = Vec::new();
    for p in planned {
        let (Some(base), Some(export)) = (&p.sync, &p.export) else {
            continue;
        };
        let started = retry_on_session_refused(master, deadline, |m| {
            let (export, base) = (export.clone(), base.clone());
            async move { sync::SyncMount::start(&m, &p.spec, &python, export, base, deadline).await }
        })
        .await;
        match started {
            Ok((_, mount)) => synced.push(mount),
            Err(e) => {
                for mount in synced {
                    mount.stop(STOP_GRACE).await;
                }
                return Err(e);
            }
        }
    }
    Ok(synced)
}

/// Unmounts `mounts` and waits (briefly) until the remote confirms.
async fn stop_all(mut mounts: Vec<Active>) {
    if mounts.is_empty() {
        return;
    }
    for active in &mut mounts {
        active.stopping.store(true, Ordering::SeqCst);
        active.stdin.take();
        if let Some(stop) = active.stop.take() {
            let _ = stop.send(());
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for mut active in mounts {
        let confirmed = tokio::time::timeout_at(deadline, async {
            loop {
                match active.events.recv().await {
                    Some(WrapperEvent::Unmounted) => return true,
                    Some(WrapperEvent::Closed) | None => return false,
                    Some(_) => {}
                }
            }
        })
        .await;
        match confirmed {
                Ok(true) => tracing::info!("unmounted {}", active.spec.remote),
                Ok(false) => tracing::debug!(
                    "mount {}: the session ended without confirming the unmount",
                    active.spec.remote
                ),
                Err(_) => tracing::warn!(
                    "mount {}: no unmount confirmation within {} s; the remote cleans up once the channel closes",
                    active.spec.remote,
                    STOP_GRACE.as_secs()
                ),
            }
        drop(active.channel);
    }
}

impl Active {
    async fn ready(&mut self, alias: &str) -> Result<()> {
        loop {
            match self.events.recv().await {
                Some(WrapperEvent::Ready) => {
                    tracing::info!(
                        "mounted {} on '{alias}' at {}",
                        self.spec.local,
                        self.spec.remote
                    );
                    return Ok(());
                }
                Some(WrapperEvent::Output(line)) => {
                    self.output.push(line);
                    if self.output.len() > 5 {
                        self.output.remove(0);
                    }
                }
                Some(WrapperEvent::Error { code, detail }) => {
                    // sshfs's own last words come before the wrapper's verdict; give them a
                    // moment to arrive.
                    let _ = tokio::time::timeout(Duration::from_millis(200), async {
                        while let Some(event) = self.events.recv().await {
                            if let WrapperEvent::Output(line) = event {
                                self.output.push(line);
                            }
                        }
                    })
                    .await;
                    return Err(wrapper::mount_error(
                        &self.spec,
                        alias,
                        &code,
                        &detail,
                        &self.output,
                    ));
                }
                // (read_events logs notes and does not pass them on.)
                Some(WrapperEvent::Unmounted | WrapperEvent::Note(_)) => {}
                Some(WrapperEvent::Closed) | None => {
                    let status =
                        tokio::time::timeout(Duration::from_secs(2), self.channel.exit_status())
                            .await
                            .ok()
                            .and_then(|s| s.ok())
                            .flatten();
                    tracing::debug!(
                        "mount {}: the session ended (status {status:?})",
                        self.spec.remote
                    );
                    return Err(wrapper::mount_error(
                        &self.spec,
                        alias,
                        "session",
                        "",
                        &self.output,
                    ));
                }
            }
        }
    }
}

/// Checks the local side of a mount. In the default mode, opens the export (confined).
#[cfg(target_os = "linux")]
fn local_export(spec: &MountSpec, source: &Source) -> Result<Option<LocalExport>> {
    check_local_dir(spec)?;
    if let Source::Alias(_) = source {
        return Ok(None);
    }
    export::Export::open(Path::new(&spec.local), spec.read_only())
        .map(|export| Some(Arc::new(export)))
        .map_err(|e| {
            Error::Local(format!(
                "cannot export {} for mount on {}: {e}{}",
                spec.local,
                spec.remote,
                if e.raw_os_error() == Some(libc::ENOSYS) {
                    " (confinement needs openat2, Linux 5.6 or later; use --ssh-host-alias-local-on-remote instead)"
                } else {
                    ""
                }
            ))
        })
}

#[cfg(not(target_os = "linux"))]
fn local_export(spec: &MountSpec, source: &Source) -> Result<Option<LocalExport>> {
    check_local_dir(spec)?;
    match source {
        Source::Alias(_) => Ok(None),
        Source::Passive => Err(Error::Local(format!(
            "cannot export {}: sshpyk serves mounts confined only on Linux (openat2); use --ssh-host-alias-local-on-remote here",
            spec.local
        ))),
    }
}

pub(super) fn check_local_dir(spec: &MountSpec) -> Result<()> {
    if Path::new(&spec.local).is_dir() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "local mount directory {} does not exist (mount on {}); create it, or fix the mounts with `sshpyk edit --mount-local-on-remote` / `--clear-mounts`",
            spec.local, spec.remote
        )))
    }
}
