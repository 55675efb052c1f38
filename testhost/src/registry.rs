//! On-disk records of running hosts, so that a later start can clean up after a process that was
//! killed before its `Drop` ran (a test binary interrupted with Ctrl-C, a `kill -9`).
//!
//! One JSON file per host in the state directory, plus a lock file that serialises namespace
//! allocation and stale cleanup across processes.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;
use serde::{Deserialize, Serialize};

use crate::net::{self, Netns};
use crate::procs;

/// Set by sshd (authorized_keys `environment=`) in every session of a host, with the host's
/// directory as value: it finds the host's processes even after they were reparented.
pub(crate) const MARKER_VAR: &str = "SSHPYK_TESTHOST";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    creator_pid: u32,
    creator_start: u64,
    pub dir: PathBuf,
    pub netns: Option<String>,
    /// The listening sshd: pid and start time.
    pub sshd: Option<(u32, u64)>,
}

impl Record {
    pub fn new(dir: PathBuf) -> Result<Self> {
        let creator_pid = std::process::id();
        let creator_start = procs::stat(creator_pid)
            .context("reading /proc/self/stat")?
            .start;
        Ok(Record {
            creator_pid,
            creator_start,
            dir,
            netns: None,
            sshd: None,
        })
    }

    fn path(&self) -> PathBuf {
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        state_dir().join(format!("{name}.json"))
    }

    pub fn save(&self) -> Result<()> {
        let path = self.path();
        // Write then rename, so a reader never sees half a record.
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(self)?)
            .and_then(|()| fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn marker(&self) -> String {
        format!("{MARKER_VAR}={}", self.dir.display())
    }

    /// Every process of the remote side: the namespace's, the listening sshd and its
    /// descendants, and anything that carries the session marker.
    pub fn processes(&self) -> BTreeSet<u32> {
        let mut pids = BTreeSet::new();
        if let Some(netns) = &self.netns {
            pids.extend(net::pids(netns));
        }
        if let Some((pid, start)) = self.sshd {
            if procs::is_same(pid, start) {
                pids.extend(procs::descendants(pid));
            }
        }
        pids.extend(procs::with_env(&self.marker()));
        pids
    }

    /// Kills the remote side and removes everything the host created. The record itself goes
    /// last, so that a failed teardown is retried by a later stale cleanup.
    pub fn teardown(&self) -> Result<()> {
        procs::kill_until_gone(|| self.processes(), Duration::from_secs(5))
            .context("killing the remote host's processes")?;
        if let Some(net) = self.netns.as_deref().and_then(Netns::from_name) {
            net.destroy()?;
        }
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", self.dir.display()));
            }
            _ => {}
        }
        match fs::remove_file(self.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path().display()))
            }
            _ => Ok(()),
        }
    }

    fn creator_alive(&self) -> bool {
        procs::is_same(self.creator_pid, self.creator_start)
    }
}

fn state_dir() -> PathBuf {
    if geteuid().is_root() {
        PathBuf::from("/run/sshpyk-testhost")
    } else {
        std::env::temp_dir().join(format!("sshpyk-testhost-{}", geteuid()))
    }
}

/// Takes the cross-process lock; it is released when the returned value is dropped.
pub(crate) fn lock() -> Result<Flock<File>> {
    let dir = state_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", path.display()))
}

/// Tears down hosts whose creating process is dead, and `sshpyk-*` namespaces that no record
/// accounts for (their creator died between `ip netns add` and saving its record). Must be
/// called with the lock held. Failures are reported on stderr and do not stop the caller.
pub(crate) fn clean_stale() {
    let mut known_netns = BTreeSet::new();
    for path in record_paths() {
        let record: Record = match fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
        {
            Ok(record) => record,
            Err(e) => {
                warn(&format!("ignoring {}: {e:#}", path.display()));
                continue;
            }
        };
        known_netns.extend(record.netns.clone());
        if !record.creator_alive() {
            if let Err(e) = record.teardown() {
                warn(&format!(
                    "cleaning up after dead process {} ({}): {e:#}",
                    record.creator_pid,
                    path.display()
                ));
            }
        }
    }
    if !geteuid().is_root() {
        return;
    }
    let orphans = match net::list() {
        Ok(names) => names,
        Err(e) => return warn(&format!("{e:#}")),
    };
    for netns in orphans {
        if known_netns.contains(&netns) {
            continue;
        }
        if let Some(net) = Netns::from_name(&netns) {
            if let Err(e) = net.destroy() {
                warn(&format!("removing orphaned namespace {netns}: {e:#}"));
            }
        }
    }
}

fn record_paths() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(state_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect()
}

/// Reports a problem that must not abort the caller (also used from `Drop`, so it must not
/// panic when stderr is closed).
pub(crate) fn warn(message: &str) {
    let _ = writeln!(io::stderr(), "sshpyk-testhost: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_of_a_dead_creator_is_stale() {
        let mut record = Record::new(PathBuf::from("/nonexistent/sshpyk-testhost-x")).unwrap();
        assert!(record.creator_alive());
        record.creator_start += 1;
        assert!(!record.creator_alive());
    }

    #[test]
    fn record_path_is_named_after_the_directory() {
        let record = Record::new(PathBuf::from("/tmp/sshpyk-testhost-abc")).unwrap();
        assert_eq!(record.path(), state_dir().join("sshpyk-testhost-abc.json"));
    }
}
