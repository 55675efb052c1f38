//! The local sshfs process: a child of ours in the foreground (`-f`) that gets SIGTERM when we
//! die, with `auto_unmount` so that its mount never outlives it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::table;

/// Lines of sshfs's stderr kept for error messages.
const TAIL_LINES: usize = 20;

pub(crate) struct Sshfs {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    mountpoint: PathBuf,
}

/// sshfs ended before its mount appeared.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) status: ExitStatus,
    /// What sshfs (and its ssh) said, last lines.
    pub(crate) stderr: Vec<String>,
}

impl Sshfs {
    /// Starts sshfs. `own_group`: out of our process group, so that the terminal's Ctrl+C is
    /// ours to handle (not when its ssh may prompt on the terminal: a background group cannot
    /// read it).
    pub(crate) fn spawn(
        args: &[String],
        mountpoint: &Path,
        own_group: bool,
    ) -> std::io::Result<Sshfs> {
        let mut cmd = Command::new("sshfs");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Dropped while still mounting (the user pressed Ctrl+C): `auto_unmount` cleans up.
            .kill_on_drop(true);
        if own_group {
            cmd.process_group(0);
        }
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tracing::debug!("running sshfs {}", args.join(" "));
        let mut child = cmd.spawn()?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let kept = stderr.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!("sshfs: {line}");
                let mut kept = kept.lock().expect("stderr tail lock");
                if kept.len() == TAIL_LINES {
                    kept.remove(0);
                }
                kept.push(line);
            }
        });
        Ok(Sshfs {
            child,
            stderr,
            mountpoint: mountpoint.to_owned(),
        })
    }

    /// Waits until the mount serves requests, sshfs exits, or `deadline` passes (`None`:
    /// sshfs's ssh may be waiting for a password typed on the terminal).
    pub(crate) async fn mounted(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<(), Option<Exited>> {
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            tokio::select! {
                status = self.child.wait() => return Err(Some(self.last_words(status).await)),
                () = &mut timeout => return Err(None),
                serves = serves(&self.mountpoint) => if serves { return Ok(()) },
            }
        }
    }

    /// Resolves when sshfs exits by itself (a lost connection without `reconnect`).
    pub(crate) async fn exited(&mut self) -> Exited {
        let status = self.child.wait().await;
        self.last_words(status).await
    }

    /// How sshfs ended, and what it said last.
    async fn last_words(&self, status: std::io::Result<ExitStatus>) -> Exited {
        let status = status
            .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL));
        // Let the stderr reader take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Exited {
            status,
            stderr: self.stderr.lock().expect("stderr tail lock").clone(),
        }
    }

    /// Waits for sshfs to end after its mount went away, ending it if it lingers.
    pub(crate) async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_ok()
        {
            return;
        }
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(1), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// sshfs mounts first and logs in afterwards (leaving again when the remote directory is
/// missing): the mount serves once a stat of its root gets an answer.
async fn serves(mountpoint: &Path) -> bool {
    while table::find(mountpoint).is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let root = mountpoint.to_owned();
    let answered = tokio::task::spawn_blocking(move || std::fs::metadata(root).is_ok())
        .await
        .unwrap_or(false);
    if !answered {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answered
}
