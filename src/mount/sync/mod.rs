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

mod tree;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::io::{AsyncWrite, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::export::Export;
use super::MountSpec;
use crate::error::{Error, Result};
use crate::ssh::Master;
use tree::Excludes;
use wire::{FromAgent, Kind, Meta, ToAgent};

/// The agent's source, sent on stdin after the loader (as the supervisor's is).
const AGENT: &str = include_str!("agent.py");
const LOADER: &str = include_str!("../../remote/loader.py");

/// Up to these, a project is synced (by default); a bigger tree keeps lazy access (sshfs).
pub const MAX_FILES: usize = 20_000;
pub const MAX_BYTES: u64 = 200 << 20;
/// The largest file taken from the remote in one piece.
const MAX_FILE: u64 = 4 << 30;
/// Local edits come in bursts (an editor's save, a `git checkout`): wait this long for the rest.
const SETTLE: Duration = Duration::from_millis(50);
/// A full local scan this often even without inotify events (a missed event, a full queue).
const RESCAN: Duration = Duration::from_secs(10);

/// What both sides last held, by path; kept by the mount across reconnections.
pub type Base = Arc<Mutex<BTreeMap<String, Meta>>>;

/// What `list` and `ps` say about a synced mount.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// Bytes being copied now, either way.
    pub pending: u64,
    /// Conflict copies made (the remote's version kept beside the local one).
    pub conflicts: Vec<String>,
    pub up: bool,
}

impl SyncState {
    pub fn describe(&self) -> String {
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
pub fn wanted(spec: &MountSpec) -> Result<bool> {
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
pub fn is_sync_option(option: &str) -> bool {
    matches!(option, "sync" | "lazy" | "no-default-excludes") || option.starts_with("exclude=")
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
pub struct SyncMount {
    pub spec: MountSpec,
    state: Arc<Mutex<SyncState>>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
    _channel: crate::ssh::mux::MuxChannel,
}

impl Drop for SyncMount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SyncMount {
    /// Makes (or brings up to date) the copy on the remote, before `deadline`; then keeps it
    /// in sync until stopped.
    pub async fn start(
        master: &Master,
        spec: &MountSpec,
        python_command: &dyn Fn(&[&str]) -> String,
        export: Arc<Export>,
        base: Base,
        deadline: Instant,
    ) -> Result<SyncMount> {
        let excludes = excludes(spec)?;
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
        let mut to_agent =
            pipe::Sender::from_owned_fd(stdin_local).map_err(crate::ssh::setup_error)?;
        let from_agent =
            pipe::Receiver::from_owned_fd(stdout_local).map_err(crate::ssh::setup_error)?;
        let mut from_agent = BufReader::with_capacity(1 << 20, from_agent);
        let lost = |e: std::io::Error| {
            Error::Ssh(format!(
                "the sync of {} to '{}' stopped: {e}",
                spec.local,
                master.alias()
            ))
        };
        tokio::io::AsyncWriteExt::write_all(
            &mut to_agent,
            format!("{:012}{AGENT}", AGENT.len()).as_bytes(),
        )
        .await
        .map_err(lost)?;
        let remote = match wire::receive(&mut from_agent, MAX_FILE).await.map_err(lost)? {
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
        // Local changes wake the sync; the watcher is ours, so it ends with the mount.
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = changes_tx.send(());
                }
            })
            .map_err(|e| Error::Local(format!("cannot watch {}: {e}", spec.local)))?;
        watcher
            .watch(Path::new(&spec.local), notify::RecursiveMode::Recursive)
            .map_err(|e| Error::Local(format!("cannot watch {}: {e}", spec.local)))?;
        let state = Arc::new(Mutex::new(SyncState {
            up: true,
            ..SyncState::default()
        }));
        // Messages are read by a task of their own: a read cut short would lose the stream's
        // place, and the sync waits on local changes too.
        let (messages_tx, messages) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            loop {
                let msg = wire::receive(&mut from_agent, MAX_FILE).await;
                let end = !matches!(msg, Ok(Some(_)));
                if messages_tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        let mut sync = Sync {
            root: PathBuf::from(&spec.local),
            label: format!("{} → {}", spec.local, spec.remote),
            read_only: spec.read_only(),
            export,
            excludes: Arc::new(excludes),
            base,
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            to_agent,
            messages,
            _reader: AbortOnDrop(reader),
            state: state.clone(),
            early: Vec::new(),
            in_flight: BTreeMap::new(),
        };
        let work = async {
            sync.first(remote).await?;
            sync.flush().await
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("copying {} to '{}'", spec.local, master.alias()),
                secs: deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64(),
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
            _channel: channel,
        })
    }

    pub fn state(&self) -> SyncState {
        let mut state = lock(&self.state).clone();
        state.up &= !self.task.is_finished();
        state
    }

    /// Brings the kernel's last writes back, then ends the agent (bounded by `wait`).
    pub async fn stop(mut self, wait: Duration) {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sync's own state, owned by its task.
struct Sync<W> {
    root: PathBuf,
    label: String,
    read_only: bool,
    export: Arc<Export>,
    excludes: Arc<Excludes>,
    base: Base,
    local: BTreeMap<String, Meta>,
    remote: BTreeMap<String, Meta>,
    to_agent: W,
    messages: mpsc::Receiver<Received>,
    _reader: AbortOnDrop,
    state: Arc<Mutex<SyncState>>,
    /// Reports of remote changes that arrived while we waited for something else.
    early: Vec<Early>,
    /// Changes sent and not yet applied or refused, by path: a report of the remote's about
    /// such a path was made before our change arrived, and the answer to it settles the path.
    /// What each one sets the path to: the base moves only once the agent applied it, so a
    /// change lost with a session is sent again by the next one.
    in_flight: BTreeMap<String, VecDeque<Option<Meta>>>,
}

enum Early {
    Changed(BTreeMap<String, Option<Meta>>),
    Refused(String, Option<Meta>, Option<Meta>),
}

/// A file or directory to bring here: `to` from the remote's `from` (they differ for a
/// conflict copy).
struct Pull {
    to: String,
    from: String,
    meta: Meta,
}

impl Pull {
    fn same(path: &str, meta: &Meta) -> Pull {
        Pull {
            to: path.to_string(),
            from: path.to_string(),
            meta: meta.clone(),
        }
    }
}

/// What to do about one path.
enum Action {
    Push,
    Pull,
    Conflict,
}

/// One read of the agent's messages: a message and the bytes after it, the end, or an error.
type Received = std::io::Result<Option<(FromAgent, Vec<u8>)>>;

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<W: AsyncWrite + Unpin> Sync<W> {
    /// The agent's next message; `Ok(None)` once its session ended. Cancel-safe.
    async fn receive(&mut self) -> Received {
        self.messages.recv().await.unwrap_or(Ok(None))
    }

    /// Brings both sides together after the agent's index: three-way with the base, else (a
    /// fresh start) what exists on one side is taken, and the newer of two that differ.
    async fn first(&mut self, remote: BTreeMap<String, Meta>) -> std::io::Result<()> {
        self.remote = remote
            .into_iter()
            .filter(|(p, m)| !self.excludes.excludes(p, m.kind() == Kind::Dir))
            .collect();
        self.local = self.scan_local().await;
        let fresh = lock(&self.base).is_empty();
        let paths: BTreeSet<String> = self
            .local
            .keys()
            .chain(self.remote.keys())
            .cloned()
            .collect();
        if fresh {
            let mut base = lock(&self.base);
            for path in &paths {
                let (l, r) = (self.local.get(path), self.remote.get(path));
                // What the newer side holds counts as the change.
                let older = match (l, r) {
                    (Some(l), Some(r)) if l.kind() == Kind::File && r.kind() == Kind::File => {
                        if l.2 >= r.2 {
                            Some(r.clone())
                        } else {
                            Some(l.clone())
                        }
                    }
                    (Some(l), Some(_)) => Some(l.clone()),
                    _ => None,
                };
                if let Some(older) = older {
                    base.insert(path.clone(), older);
                }
            }
        }
        self.reconcile(paths).await
    }

    /// The local tree now (a blocking walk, off the launcher's one thread).
    async fn scan_local(&self) -> BTreeMap<String, Meta> {
        let (root, excludes) = (self.root.clone(), self.excludes.clone());
        tokio::task::spawn_blocking(move || tree::scan(&root, &excludes))
            .await
            .unwrap_or_default()
    }

    /// Runs until stopped: local changes (inotify, then a scan), remote changes (the agent's
    /// reports), each reconciled as it comes.
    async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<()>,
        mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let mut rescan = tokio::time::interval(RESCAN);
        let result: std::io::Result<()> = async {
            loop {
                tokio::select! {
                    done = &mut stop => {
                        self.flush().await?;
                        if let Ok(done) = done {
                            let _ = done.send(());
                        }
                        return Ok(());
                    }
                    Some(()) = changes.recv() => {
                        tokio::time::sleep(SETTLE).await;
                        while changes.try_recv().is_ok() {}
                        self.local_changed().await?;
                    }
                    _ = rescan.tick() => self.local_changed().await?,
                    msg = self.receive() => match msg? {
                        Some((FromAgent::Changed { entries }, _)) => self.remote_changed(entries).await?,
                        Some((FromAgent::Refused { path, meta, expected }, _)) => self.refused(path, meta, expected).await?,
                        Some((FromAgent::Applied { path }, _)) => self.applied(&path),
                        Some((FromAgent::Failed { path, message }, _)) => {
                            if let Some(path) = &path {
                                self.landed(path);
                            }
                            tracing::warn!("sync {}: {} on the remote: {message}", self.label, path.unwrap_or_default());
                        }
                        Some(_) => {}
                        None => return Err(std::io::Error::other("the agent's session ended")),
                    }
                }
            }
        }
        .await;
        lock(&self.state).up = false;
        if let Err(e) = result {
            tracing::warn!("sync {} stopped: {e}", self.label);
        }
    }

    /// The kernel changed `path` before our change arrived: what we thought it held is the
    /// base again, and what it holds now is a change of the remote's (a conflict, if ours too).
    async fn refused(
        &mut self,
        path: String,
        meta: Option<Meta>,
        expected: Option<Meta>,
    ) -> std::io::Result<()> {
        self.landed(&path);
        self.set_base(&path, expected.as_ref());
        match meta {
            Some(m) => self.remote.insert(path.clone(), m),
            None => self.remote.remove(&path),
        };
        self.local = self.scan_local().await;
        self.reconcile(BTreeSet::from([path])).await
    }

    /// The agent answered the oldest change of `path`; what it set the path to.
    fn landed(&mut self, path: &str) -> Option<Option<Meta>> {
        let sent = self.in_flight.get_mut(path)?;
        let meta = sent.pop_front();
        if sent.is_empty() {
            self.in_flight.remove(path);
        }
        meta
    }

    /// Both sides now hold what the change sent.
    fn applied(&mut self, path: &str) {
        if let Some(meta) = self.landed(path) {
            self.set_base(path, meta.as_ref());
        }
    }

    fn sent(&mut self, path: &str, meta: Option<&Meta>) {
        self.in_flight
            .entry(path.to_string())
            .or_default()
            .push_back(meta.cloned());
    }

    async fn local_changed(&mut self) -> std::io::Result<()> {
        let now = self.scan_local().await;
        let changed: BTreeSet<String> = now
            .iter()
            .filter(|(p, m)| !Meta::same(self.local.get(*p), Some(m)))
            .map(|(p, _)| p.clone())
            .chain(self.local.keys().filter(|p| !now.contains_key(*p)).cloned())
            .collect();
        self.local = now;
        if changed.is_empty() {
            return Ok(());
        }
        self.reconcile(changed).await
    }

    async fn remote_changed(
        &mut self,
        entries: BTreeMap<String, Option<Meta>>,
    ) -> std::io::Result<()> {
        tracing::debug!(
            "sync {}: changed on the remote: {:?}",
            self.label,
            entries.keys().collect::<Vec<_>>()
        );
        let mut paths = BTreeSet::new();
        for (path, meta) in entries {
            if self.in_flight.contains_key(&path) {
                continue;
            }
            match meta {
                Some(m) if !self.excludes.excludes(&path, m.kind() == Kind::Dir) => {
                    self.remote.insert(path.clone(), m);
                    paths.insert(path);
                }
                Some(_) => {}
                None => {
                    if self.remote.remove(&path).is_some() {
                        paths.insert(path);
                    }
                }
            }
        }
        if paths.is_empty() {
            return Ok(());
        }
        // The local side may have moved on since its last scan.
        self.local = self.scan_local().await;
        self.reconcile(paths).await
    }

    /// Makes both sides agree on `paths`: creations in order (parents first), removals in
    /// reverse (children first).
    async fn reconcile(&mut self, paths: BTreeSet<String>) -> std::io::Result<()> {
        tracing::debug!("sync {}: reconciling {paths:?}", self.label);
        let mut pulls = Vec::new();
        let mut removals = Vec::new();
        for path in &paths {
            let l = self.local.get(path).cloned();
            let r = self.remote.get(path).cloned();
            let b = lock(&self.base).get(path).cloned();
            if Meta::same(l.as_ref(), r.as_ref()) {
                self.set_base(path, l.as_ref());
                continue;
            }
            let local_changed = !Meta::same(l.as_ref(), b.as_ref());
            let remote_changed = !Meta::same(r.as_ref(), b.as_ref()) && !self.read_only;
            let action = match (local_changed, remote_changed) {
                (true, false) | (false, false) => Action::Push,
                (false, true) => Action::Pull,
                (true, true) => Action::Conflict,
            };
            match (action, &l, &r) {
                (Action::Push, None, _) => removals.push(path.clone()),
                (Action::Push, Some(l), _) => self.push(path, l).await?,
                (Action::Pull, _, None) => removals.push(path.clone()),
                (Action::Pull, _, Some(r)) => pulls.push(Pull::same(path, r)),
                // The local version wins the path; a remote file is kept beside it (fetched
                // before the push replaces it: the agent answers in order).
                (Action::Conflict, Some(l), Some(r)) if r.kind() == Kind::File => {
                    pulls.push(Pull {
                        to: conflict_name(path),
                        from: path.clone(),
                        meta: r.clone(),
                    });
                    self.ask(path).await?;
                    self.push(path, l).await?;
                }
                // A change against a removal: the change is kept.
                (Action::Conflict, Some(l), _) => self.push(path, l).await?,
                (Action::Conflict, None, Some(r)) => pulls.push(Pull::same(path, r)),
                (Action::Conflict, None, None) => self.set_base(path, None),
            }
        }
        for path in removals.iter().rev() {
            self.remove(path).await?;
        }
        self.pull(pulls).await
    }

    fn set_base(&self, path: &str, meta: Option<&Meta>) {
        let mut base = lock(&self.base);
        match meta {
            Some(m) => base.insert(path.to_string(), m.clone()),
            None => base.remove(path),
        };
    }

    /// Copies the local `path` to the remote.
    async fn push(&mut self, path: &str, l: &Meta) -> std::io::Result<()> {
        let (meta, data) = match l.kind() {
            Kind::File => match tree::read_file(&self.export, path) {
                Ok(read) => read,
                // Gone or changed meanwhile: the next scan sees it.
                Err(_) => return Ok(()),
            },
            _ => (l.clone(), Vec::new()),
        };
        lock(&self.state).pending += data.len() as u64;
        // What we replace: the agent refuses the change if the kernel changed it meanwhile.
        let expect = self.remote.get(path).cloned();
        let path = path.to_string();
        let msg = match meta.kind() {
            Kind::File => ToAgent::Put {
                path: path.clone(),
                size: data.len() as u64,
                mode: meta.3 & 0o7777,
                mtime_ns: meta.2,
                expect,
            },
            Kind::Dir => ToAgent::Mkdir {
                path: path.clone(),
                expect,
            },
            Kind::Link => ToAgent::Symlink {
                path: path.clone(),
                target: meta.4.clone().unwrap_or_default(),
                expect,
            },
        };
        let path = path.as_str();
        self.sent(path, Some(&meta));
        wire::send(&mut self.to_agent, &msg, &data).await?;
        let mut state = lock(&self.state);
        state.pending = state.pending.saturating_sub(data.len() as u64);
        drop(state);
        self.local.insert(path.to_string(), meta.clone());
        self.remote.insert(path.to_string(), meta);
        Ok(())
    }

    /// Removes `path` on the side where it still exists (the other removed it).
    async fn remove(&mut self, path: &str) -> std::io::Result<()> {
        if self.local.contains_key(path) {
            if self.read_only {
                return Ok(());
            }
            if let Err(e) = tree::remove(&self.export, path) {
                tracing::debug!("sync {}: kept {path}: {e}", self.label);
            }
            self.local.remove(path);
        } else if self.remote.contains_key(path) {
            let remove = ToAgent::Remove {
                path: path.to_string(),
                expect: self.remote.get(path).cloned(),
            };
            self.sent(path, None);
            wire::send(&mut self.to_agent, &remove, &[]).await?;
            self.remote.remove(path);
            return Ok(());
        }
        self.set_base(path, None);
        Ok(())
    }

    /// Brings remote entries here: directories at once, files asked for all at once (one
    /// stream, no round trip per file) and written as they come. A conflict copy's meta names
    /// the remote path it is fetched from.
    async fn pull(&mut self, pulls: Vec<Pull>) -> std::io::Result<()> {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for Pull {
            to: path,
            from,
            meta,
        } in pulls
        {
            match meta.kind() {
                Kind::Dir => {
                    if let Err(e) = self.export.mkdir(&path, meta.3 & 0o777 | 0o700) {
                        if e.kind() != std::io::ErrorKind::AlreadyExists {
                            tracing::warn!("sync {}: cannot make {path} here: {e}", self.label);
                            continue;
                        }
                    }
                    self.local
                        .insert(path.clone(), Meta(Kind::Dir, 0, 0, meta.3, None));
                    self.set_base(&path, Some(&meta));
                }
                // A link made on the remote may point anywhere: it is not brought here.
                Kind::Link => {
                    tracing::debug!(
                        "sync {}: the remote made a link at {path}; not copied here",
                        self.label
                    );
                    self.set_base(&path, self.local.get(&path).cloned().as_ref());
                }
                Kind::File => {
                    lock(&self.state).pending += meta.size();
                    let ask = !wanted.contains_key(&from) && from == path;
                    wanted.entry(from.clone()).or_default().push(path);
                    // (A conflict copy was asked for before the push that replaces it.)
                    if ask {
                        self.ask(&from).await?;
                    }
                }
            }
        }
        while !wanted.is_empty() {
            let Some((msg, data)) = self.receive().await? else {
                return Err(std::io::Error::other("the agent's session ended"));
            };
            let (from, meta) = match msg {
                FromAgent::Data { path, meta, .. } => (path, meta),
                FromAgent::Changed { entries } => {
                    self.early.push(Early::Changed(entries));
                    continue;
                }
                FromAgent::Refused {
                    path,
                    meta,
                    expected,
                } => {
                    self.early.push(Early::Refused(path, meta, expected));
                    continue;
                }
                FromAgent::Applied { path } => {
                    self.applied(&path);
                    continue;
                }
                FromAgent::Failed {
                    path: Some(path), ..
                } => {
                    self.landed(&path);
                    continue;
                }
                _ => continue,
            };
            let Some(targets) = wanted.remove(&from) else {
                continue;
            };
            for mut path in targets {
                let Some(meta) = meta.clone() else { continue };
                // Edited here since our last look: ours stays, theirs goes beside it.
                if path == from
                    && !Meta::same(
                        tree::stat(&self.export, &path).as_ref(),
                        self.local.get(&path),
                    )
                {
                    path = conflict_name(&from);
                }
                let conflict = path != from;
                let mut state = lock(&self.state);
                state.pending = state.pending.saturating_sub(meta.size());
                drop(state);
                if let Err(e) = tree::write_file(&self.export, &path, &meta, &data) {
                    tracing::warn!("sync {}: cannot write {path} here: {e}", self.label);
                    continue;
                }
                if conflict {
                    tracing::warn!(
                        "sync {}: {from} changed on both sides; kept the local version, and the remote's as {path}",
                        self.label
                    );
                    lock(&self.state).conflicts.push(path.clone());
                    // The copy goes to the remote too, at the next local scan.
                    continue;
                }
                self.local.insert(path.clone(), meta.clone());
                self.remote.insert(path.clone(), meta.clone());
                self.set_base(&path, Some(&meta));
            }
        }
        let early = std::mem::take(&mut self.early);
        for report in early {
            match report {
                Early::Changed(entries) => Box::pin(self.remote_changed(entries)).await?,
                Early::Refused(path, meta, expected) => {
                    Box::pin(self.refused(path, meta, expected)).await?
                }
            }
        }
        Ok(())
    }

    async fn ask(&mut self, path: &str) -> std::io::Result<()> {
        let get = ToAgent::Get {
            path: path.to_string(),
        };
        wire::send(&mut self.to_agent, &get, &[]).await
    }

    /// Asks the agent for a scan now and applies what it found: after it, what the kernel
    /// wrote before the request is here.
    async fn flush(&mut self) -> std::io::Result<()> {
        wire::send(&mut self.to_agent, &ToAgent::Flush, &[]).await?;
        loop {
            match self.receive().await? {
                Some((FromAgent::Flushed, _)) => return Ok(()),
                Some((FromAgent::Changed { entries }, _)) => self.remote_changed(entries).await?,
                Some((
                    FromAgent::Refused {
                        path,
                        meta,
                        expected,
                    },
                    _,
                )) => self.refused(path, meta, expected).await?,
                Some((FromAgent::Applied { path }, _)) => self.applied(&path),
                Some((
                    FromAgent::Failed {
                        path: Some(path), ..
                    },
                    _,
                )) => {
                    self.landed(&path);
                }
                Some(_) => {}
                None => return Err(std::io::Error::other("the agent's session ended")),
            }
        }
    }
}

/// Where the remote's version of a file changed on both sides is kept.
fn conflict_name(path: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{path}.sshpyk-conflict-{secs}")
}
