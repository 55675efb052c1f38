//! Which `sshpyk mount`s are active: each one keeps a small record in the runtime dir while it
//! runs, so that `sshpyk list` can show them and `--umount` knows what sshpyk created.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::table;
use crate::error::{Error, Result};

/// One `sshpyk mount` process and what it mounted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ActiveMount {
    pub(crate) pid: u32,
    pub(crate) alias: String,
    /// The remote directory as given (`~` for the home directory).
    pub(crate) remote_path: String,
    pub(crate) mountpoint: PathBuf,
    /// sshpyk created the mount point (and removes it afterwards).
    pub(crate) created_mountpoint: bool,
    /// "subshell" or "foreground".
    pub(crate) mode: String,
}

impl ActiveMount {
    /// One line for people: `alias:path on MOUNTPOINT (mode, pid N)`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}:{} on {}  ({}, pid {})",
            self.alias,
            self.remote_path,
            self.mountpoint.display(),
            self.mode,
            self.pid
        )
    }
}

/// The record of a running mount; removed when dropped.
#[derive(Debug)]
pub(crate) struct Record {
    path: PathBuf,
}

impl Record {
    pub(crate) fn write(mount: &ActiveMount) -> Result<Record> {
        let path = record_path(&crate::runtime::dir()?, mount.pid);
        let text = serde_json::to_string(mount).expect("a mount record serializes");
        std::fs::write(&path, text)
            .map_err(Error::io(format!("cannot write {}", path.display())))?;
        Ok(Record { path })
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn record_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("mount-{pid}.json"))
}

/// The mounts whose `sshpyk mount` still runs and whose mount is in place. What processes that
/// died (SIGKILL) left is removed on the way: their records, and the mount points they created
/// once nothing is mounted there and they are empty.
pub(crate) fn active() -> Vec<ActiveMount> {
    records()
        .into_iter()
        .filter_map(|(path, mount)| {
            let alive =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(mount.pid as i32), None).is_ok();
            if !alive {
                if mount.created_mountpoint && table::find(&mount.mountpoint).is_none() {
                    let _ = std::fs::remove_dir(&mount.mountpoint);
                }
                let _ = std::fs::remove_file(path);
                return None;
            }
            table::find(&mount.mountpoint).map(|_| mount)
        })
        .collect()
}

fn records() -> Vec<(PathBuf, ActiveMount)> {
    let Ok(dir) = crate::runtime::dir() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mount-") && n.ends_with(".json"))
        })
        .filter_map(|p| {
            let mount = serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
            Some((p, mount))
        })
        .collect()
}
