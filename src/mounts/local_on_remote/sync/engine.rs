//! The sync of one mount: three views of each path (here, there, and what both last held),
//! and what to do when they differ (the rules are in [`super`]'s module doc).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::super::export::Export;
use super::super::MountSpec;
use super::tree::{self, Excludes};
use super::wire::{self, FromAgent, Kind, Meta, ToAgent};
use super::{lock, Base, SyncState, MAX_FILE};

/// Local edits come in bursts (an editor's save, a `git checkout`): wait this long for the rest.
const SETTLE: Duration = Duration::from_millis(50);
/// A full local scan this often even without inotify events (a missed event, a full queue).
const RESCAN: Duration = Duration::from_secs(10);

/// The sync's own state, owned by its task.
pub(super) struct Sync<W> {
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
    pub(super) fn new<R: AsyncRead + Unpin + Send + 'static>(
        spec: &MountSpec,
        export: Arc<Export>,
        excludes: Excludes,
        base: Base,
        to_agent: W,
        mut from_agent: R,
        state: Arc<Mutex<SyncState>>,
    ) -> Sync<W> {
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
        Sync {
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
            state,
            early: Vec::new(),
            in_flight: BTreeMap::new(),
        }
    }
    /// The agent's next message; `Ok(None)` once its session ended. Cancel-safe.
    async fn receive(&mut self) -> Received {
        self.messages.recv().await.unwrap_or(Ok(None))
    }

    /// Brings both sides together after the agent's index: three-way with the base, else (a
    /// fresh start) what exists on one side is taken, and the newer of two that differ.
    pub(super) async fn first(&mut self, remote: BTreeMap<String, Meta>) -> std::io::Result<()> {
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
    pub(super) async fn run(
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
        let mut wanted = self.ask_for(pulls).await?;
        while !wanted.is_empty() {
            let Some((from, meta, data)) = self.next_data().await? else {
                continue;
            };
            let (Some(targets), Some(meta)) = (wanted.remove(&from), meta) else {
                continue;
            };
            for path in targets {
                self.write_pulled(&from, path, &meta, &data);
            }
        }
        // What came while we waited for the data, in the order it came.
        for report in std::mem::take(&mut self.early) {
            match report {
                Early::Changed(entries) => Box::pin(self.remote_changed(entries)).await?,
                Early::Refused(path, meta, expected) => {
                    Box::pin(self.refused(path, meta, expected)).await?
                }
            }
        }
        Ok(())
    }

    /// Makes the pulled directories here and asks the agent for the files' contents, once per
    /// remote file: what `pull` then waits for, each remote path with the local paths it goes to.
    async fn ask_for(
        &mut self,
        pulls: Vec<Pull>,
    ) -> std::io::Result<BTreeMap<String, Vec<String>>> {
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
        Ok(wanted)
    }

    /// The agent's next message when it is a file's data (its path, meta and contents); other
    /// messages are handled, or set aside for after the pull, and give `None`.
    async fn next_data(&mut self) -> std::io::Result<Option<(String, Option<Meta>, Vec<u8>)>> {
        let Some((msg, data)) = self.receive().await? else {
            return Err(std::io::Error::other("the agent's session ended"));
        };
        match msg {
            FromAgent::Data { path, meta, .. } => return Ok(Some((path, meta, data))),
            FromAgent::Changed { entries } => self.early.push(Early::Changed(entries)),
            FromAgent::Refused {
                path,
                meta,
                expected,
            } => self.early.push(Early::Refused(path, meta, expected)),
            FromAgent::Applied { path } => self.applied(&path),
            FromAgent::Failed {
                path: Some(path), ..
            } => {
                self.landed(&path);
            }
            _ => {}
        }
        Ok(None)
    }

    /// Writes the remote file `from`'s contents at `path` here. A file edited here since our
    /// last look stays: theirs goes beside it, as a conflict copy.
    fn write_pulled(&mut self, from: &str, mut path: String, meta: &Meta, data: &[u8]) {
        if path == from
            && !Meta::same(
                tree::stat(&self.export, &path).as_ref(),
                self.local.get(&path),
            )
        {
            path = conflict_name(from);
        }
        let conflict = path != from;
        let mut state = lock(&self.state);
        state.pending = state.pending.saturating_sub(meta.size());
        drop(state);
        if let Err(e) = tree::write_file(&self.export, &path, meta, data) {
            tracing::warn!("sync {}: cannot write {path} here: {e}", self.label);
            return;
        }
        if conflict {
            tracing::warn!(
                "sync {}: {from} changed on both sides; kept the local version, and the remote's as {path}",
                self.label
            );
            lock(&self.state).conflicts.push(path);
            // The copy goes to the remote too, at the next local scan.
            return;
        }
        self.local.insert(path.clone(), meta.clone());
        self.remote.insert(path.clone(), meta.clone());
        self.set_base(&path, Some(meta));
    }

    async fn ask(&mut self, path: &str) -> std::io::Result<()> {
        let get = ToAgent::Get {
            path: path.to_string(),
        };
        wire::send(&mut self.to_agent, &get, &[]).await
    }

    /// Asks the agent for a scan now and applies what it found: after it, what the kernel
    /// wrote before the request is here.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
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
