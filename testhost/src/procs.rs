//! Process-table helpers read from /proc (the fixture is Linux-only anyway).

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Clock ticks since boot: with the pid, it identifies a process despite pid reuse.
    pub start: u64,
}

pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may itself contain spaces and parentheses: it ends at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 of proc(5) (state), fields[1] field 4 (ppid), fields[19] field 22.
    Some(Stat {
        comm: text[open + 1..close].to_string(),
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` exists and is not a zombie.
pub(crate) fn is_running(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Whether `pid` is still running and is the process that started at `start`.
pub(crate) fn is_same(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && !matches!(s.state, 'Z' | 'X'))
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `root` and all its running descendants.
pub(crate) fn descendants(root: u32) -> BTreeSet<u32> {
    let table: Vec<(u32, Stat)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect();
    let mut found = BTreeSet::from([root]);
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, s) in &table {
            if s.ppid == parent && found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found.retain(|&pid| is_running(pid));
    found
}

/// Processes whose environment holds exactly `entry` (`NAME=value`). Processes we may not
/// inspect are skipped.
pub(crate) fn with_env(entry: &str) -> BTreeSet<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        })
        .collect()
}

/// SIGKILLs whatever `list` returns until it returns nothing running, for at most `timeout`.
/// `list` is called again each round because killed processes may have spawned others.
pub(crate) fn kill_until_gone(list: impl Fn() -> BTreeSet<u32>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let me = std::process::id();
    loop {
        let pids: Vec<u32> = list()
            .into_iter()
            .filter(|&pid| pid != me && is_running(pid))
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} still running after SIGKILL");
        }
        for pid in pids {
            // The process may have exited since it was listed: ESRCH is fine.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
}
