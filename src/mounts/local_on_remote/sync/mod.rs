//! A local project directory as a synchronised copy on the remote's own disk.
//!
//! # Why a copy, not a caching mount
//!
//! Over a FUSE mount (sshfs), every `stat`, `open` and `read` the kernel makes is a round trip
//! to this machine, one after another since Python imports one file at a time: measured at
//! 50 ms of RTT, `import` of a 200-module package took 114 s, and reading 1,000 small files 108 s,
//! every time (sshfs caches nothing across accesses). Caching (sshfs's `kernel_cache`, long
//! attribute timeouts, rclone's VFS) removes the second pass but not the first, and only the
//! launcher sees local edits, so it would have to invalidate the remote's cache anyway. A copy
//! pays one stream at the start (every file is pipelined, no round trip per file) and reads at
//! disk speed after; edits flow each way as they happen. Mutagen and Unison work this way.
//!
//! # How
//!
//! One ssh session per mount runs a small agent (agent.py, in the remote python) that makes and
//! watches the copy. This side keeps three views of each path: the local tree (scanned when
//! inotify says it changed), the remote tree (the agent's index, then its reports of what
//! changed, every 0.25 s), and the *base*, what both last held. A path that changed on one side
//! only is copied to the other; one that changed on both is a conflict: the local version stays
//! at the path on both sides, and the remote's is kept beside it as
//! `NAME.sshpyk-conflict-<time>` (on both sides too). Nothing is overwritten silently. The base
//! is kept across reconnections; a fresh start (no base) takes what exists on one side only,
//! and the newer of two that differ.
//!
//! Links are copied as links from here and never followed on either side; every local change
//! goes through the confined export (`openat2(RESOLVE_BENEATH)`). `ro` mounts never take
//! anything from the remote. Excludes: [`tree::DEFAULT_EXCLUDES`], the root `.gitignore`,
//! virtualenvs, and the user's `exclude=` patterns.
//!
//! # Lifetime
//!
//! The copy is made before the kernel starts. At a stop, the agent is asked for a last scan and
//! what the kernel wrote is brought back before the session ends. The copy stays on the remote
//! (marked as ours), so the next start only sends what differs; a launcher killed with SIGKILL
//! leaves the kernel's last writes there, and the next start brings them back.

mod engine;
mod tree;
mod wire;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::Watcher;
use tokio::io::BufReader;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::export::Export;
use super::MountSpec;
use crate::error::{Error, Result};
use crate::ssh::mux::MuxChannel;
use crate::ssh::Master;
use engine::Sync;
use tree::Excludes;
use wire::{FromAgent, Meta};

/// The agent's source, sent on stdin after the loader (as the supervisor's is).
const AGENT: &str = include_str!("agent.py");
const LOADER: &str = include_str!("../../../supervisor/loader.py");

/// Up to these, a project is synced (by default); a bigger tree keeps lazy access (sshfs).
pub(crate) const MAX_FILES: usize = 20_000;
pub(crate) const MAX_BYTES: u64 = 200 << 20;
/// The largest file taken from the remote in one piece.
const MAX_FILE: u64 = 4 << 30;

/// What both sides last held, by path; kept by the mount across reconnections.
pub(crate) type Base = Arc<Mutex<BTreeMap<String, Meta>>>;

/// What `list` and `ps` say about a synced mount.
#[derive(Debug, Clone, Default)]
pub(crate) struct SyncState {
    /// Bytes being copied now, either way.
    pub(crate) pending: u64,
    /// Conflict copies made (the remote's version kept beside the local one).
    pub(crate) conflicts: Vec<String>,
    pub(crate) up: bool,
}

impl SyncState {
    pub(crate) fn describe(&self) -> String {
        let mut text = format!("synced copy, {} to sync", bytes(self.pending));
        if let Some(last) = self.conflicts.last() {
            text.push_str(&format!(
                ", {} conflict(s): the remote's version kept as {last}",
                self.conflicts.len()
            ));
        }
        text
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}

/// Whether `spec` is synced: `sync` or `lazy` in its options decide; else a tree within
/// [`MAX_FILES`] and [`MAX_BYTES`] (excludes left out) is.
pub(crate) fn wanted(spec: &MountSpec) -> Result<bool> {
    if spec.options.iter().any(|o| o == "lazy") {
        return Ok(false);
    }
    if spec.options.iter().any(|o| o == "sync") {
        return Ok(true);
    }
    let root = Path::new(&spec.local);
    let excludes = excludes(spec)?;
    let (mut files, mut size) = (0usize, 0u64);
    for meta in tree::scan(root, &excludes).values() {
        files += 1;
        size += meta.size();
        if files > MAX_FILES || size > MAX_BYTES {
            tracing::info!(
                "{} holds more than {MAX_FILES} files or {} MiB: mounted lazily (sshfs), not copied; `:sync` in the mount spec copies it anyway",
                spec.local,
                MAX_BYTES >> 20
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// The mount spec options that belong to the sync, not to sshfs.
pub(crate) fn is_sync_option(option: &str) -> bool {
    matches!(option, "sync" | "lazy" | "no-default-excludes") || option.starts_with("exclude=")
}

/// The sync agent's session on the remote: started, sent its source, and past what the login
/// shell printed before it.
struct Agent {
    channel: MuxChannel,
    to: pipe::Sender,
    from: BufReader<pipe::Receiver>,
}

impl Agent {
    /// Starts the agent for `spec`'s remote dir; with the index of what that dir holds.
    async fn start(
        master: &Master,
        spec: &MountSpec,
        python_command: &dyn Fn(&[&str]) -> String,
        lost: impl Fn(std::io::Error) -> Error,
    ) -> Result<(Agent, BTreeMap<String, Meta>)> {
        let mode = if spec.read_only() { "ro" } else { "rw" };
        let command = python_command(&["-u", "-c", LOADER, &spec.remote, mode]);
        let (stdin_remote, stdin_local) = crate::ssh::pipe()?;
        let (stdout_local, stdout_remote) = crate::ssh::pipe()?;
        let stderr = std::fs::File::open("/dev/null")
            .map_err(crate::ssh::setup_error)?
            .into();
        let channel = master
            .open_session(&command, stdin_remote, stdout_remote, stderr)
            .await?;
        let mut to = pipe::Sender::from_owned_fd(stdin_local).map_err(crate::ssh::setup_error)?;
        let from = pipe::Receiver::from_owned_fd(stdout_local).map_err(crate::ssh::setup_error)?;
        let mut from = BufReader::with_capacity(1 << 20, from);
        tokio::io::AsyncWriteExt::write_all(
            &mut to,
            format!("{:012}{AGENT}", AGENT.len()).as_bytes(),
        )
        .await
        .map_err(&lost)?;
        wire::skip_to_marker(&mut from).await.map_err(&lost)?;
        let index = match wire::receive(&mut from, MAX_FILE).await.map_err(&lost)? {
            Some((FromAgent::Index { entries }, _)) => entries,
            Some((FromAgent::Error { message }, _)) => {
                return Err(Error::Remote(format!(
                    "cannot copy {} to '{}': {message}",
                    spec.local,
                    master.alias()
                )))
            }
            _ => {
                return Err(Error::Remote(format!(
                    "the sync agent for {} did not start on '{}'; check the remote python with `sshpyk list`",
                    spec.remote,
                    master.alias()
                )))
            }
        };
        Ok((Agent { channel, to, from }, index))
    }
}

/// Local changes under `spec`'s dir wake the sync; the watcher is the mount's, so it ends with
/// it.
fn watch(spec: &MountSpec) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let cannot = |e: notify::Error| Error::Local(format!("cannot watch {}: {e}", spec.local));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = changes_tx.send(());
        }
    })
    .map_err(cannot)?;
    watcher
        .watch(Path::new(&spec.local), notify::RecursiveMode::Recursive)
        .map_err(cannot)?;
    Ok((watcher, changes))
}

fn excludes(spec: &MountSpec) -> Result<Excludes> {
    let user: Vec<String> = spec
        .options
        .iter()
        .filter_map(|o| o.strip_prefix("exclude=").map(String::from))
        .collect();
    let defaults = !spec.options.iter().any(|o| o == "no-default-excludes");
    Excludes::new(Path::new(&spec.local), defaults, &user).map_err(|e| {
        Error::Invalid(format!(
            "mount {}: {e}; fix it with `sshpyk edit --mount-local-on-remote`",
            spec.local
        ))
    })
}

/// A running sync of one mount. Dropping it ends the agent's session (the copy stays).
pub(crate) struct SyncMount {
    pub(crate) spec: MountSpec,
    state: Arc<Mutex<SyncState>>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
    _channel: MuxChannel,
}

impl Drop for SyncMount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SyncMount {
    /// Makes (or brings up to date) the copy on the remote, before `deadline`; then keeps it
    /// in sync until stopped.
    pub(crate) async fn start(
        master: &Master,
        spec: &MountSpec,
        python_command: &dyn Fn(&[&str]) -> String,
        export: Arc<Export>,
        base: Base,
        deadline: Instant,
    ) -> Result<SyncMount> {
        let excludes = excludes(spec)?;
        let budget = deadline.saturating_duration_since(Instant::now());
        let lost = |e: std::io::Error| {
            Error::Ssh(format!(
                "the sync of {} to '{}' stopped: {e}",
                spec.local,
                master.alias()
            ))
        };
        let (agent, remote) = Agent::start(master, spec, python_command, lost).await?;
        let (watcher, changes) = watch(spec)?;
        let state = Arc::new(Mutex::new(SyncState {
            up: true,
            ..SyncState::default()
        }));
        let mut sync = Sync::new(
            spec,
            export,
            excludes,
            base,
            agent.to,
            agent.from,
            state.clone(),
        );
        let work = async {
            sync.first(remote).await?;
            sync.flush().await
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("copying {} to '{}'", spec.local, master.alias()),
                secs: budget.as_secs_f64(),
                hint: "raise --launch-timeout, or mount it lazily with ':lazy' in the mount spec"
                    .into(),
            })?
            .map_err(lost)?;
        tracing::info!(
            "copied {} to '{}' at {} (synced both ways)",
            spec.local,
            master.alias(),
            spec.remote
        );
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(sync.run(changes, stopped));
        Ok(SyncMount {
            spec: spec.clone(),
            state,
            stop: Some(stop),
            task,
            _watcher: watcher,
            _channel: agent.channel,
        })
    }

    pub(crate) fn state(&self) -> SyncState {
        let mut state = lock(&self.state).clone();
        state.up &= !self.task.is_finished();
        state
    }

    /// Brings the kernel's last writes back, then ends the agent (bounded by `wait`).
    pub(crate) async fn stop(mut self, wait: Duration) {
        let Some(stop) = self.stop.take() else { return };
        let (done, finished) = oneshot::channel();
        if stop.send(done).is_err() {
            return;
        }
        if tokio::time::timeout(wait, finished).await.is_err() {
            tracing::warn!(
                "mount {}: the last changes on the remote were not all brought back within {} s; they stay in the copy there and come back at the next start",
                self.spec.remote,
                wait.as_secs()
            );
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(local: &Path, options: &[&str]) -> MountSpec {
        MountSpec {
            local: local.display().to_string(),
            remote: "/remote/x".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn a_project_is_synced_a_huge_tree_lazy_unless_the_spec_says() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "").unwrap();
        assert!(wanted(&spec(dir.path(), &[])).unwrap());
        assert!(!wanted(&spec(dir.path(), &["lazy"])).unwrap());
        for i in 0..=MAX_FILES {
            std::fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        assert!(!wanted(&spec(dir.path(), &[])).unwrap());
        assert!(wanted(&spec(dir.path(), &["sync"])).unwrap());
        // Excluded files do not count.
        assert!(wanted(&spec(dir.path(), &["exclude=f*"])).unwrap());
        assert!(is_sync_option("exclude=x") && is_sync_option("lazy") && !is_sync_option("ro"));
    }
}
