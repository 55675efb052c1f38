//! The remote half of a mount: one session of the master (its mux protocol, no `ssh` process)
//! that runs a small POSIX sh wrapper around the remote's sshfs (`wrapper.sh`, beside this file
//! with the functions it shares with `list`'s probe). The wrapper checks, mounts, reports, waits
//! for sshfs to end for whatever reason, and then unmounts and removes what it created.
//!
//! Tagged lines go to the session's stderr (`sshpyk-mount <event> ...`): in the default mode the
//! session's stdout and stdin carry SFTP between sshfs (`-o passive`) and the launcher, from the
//! line `sshpyk-sftp-start` on.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::BufReader;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::MountSpec;
use crate::error::{Error, Result};
use crate::ssh::mux::MuxChannel;
use crate::ssh::shell::sh_command;
use crate::ssh::Master;

/// The line after which the session's stdout is SFTP.
pub(crate) const SFTP_START: &[u8] = b"sshpyk-sftp-start\n";

/// Shell functions shared by the wrapper and `list`'s probe.
const FUNCTIONS: &str = include_str!("wrapper_functions.sh");

/// The directory of this user's mount states on the remote. Its name is known in advance (a
/// reconnected launcher's wrapper must find its predecessor's state), so it is made private
/// with `mkdir -m 700` and otherwise refused unless it is a real directory (not a symlink) of
/// this user's with mode 0700: its files say which processes to end. In a sticky /tmp, no one
/// else can swap it once checked.
const STATES_DIR: &str = include_str!("wrapper_states_dir.sh");

/// Checks, mounts, reports, waits for sshfs to end, cleans up; its arguments are in its header.
const WRAPPER: &str = include_str!("wrapper.sh");

/// Runs on the remote for `list`: is FUSE usable, and where is each configured sshfs.
const PROBE: &str = include_str!("wrapper_probe.sh");

/// How the remote's sshfs reaches the exported directory.
pub(crate) enum Source<'a> {
    /// SFTP over the session itself, served by the launcher.
    Passive,
    /// The remote's own ssh config has an alias back to this machine.
    Alias(&'a str),
}

/// The sshfs `-o` list: the user's options first, then ours.
pub(crate) fn sshfs_options(spec: &MountSpec, source: &Source) -> String {
    let mut opts: Vec<&str> = Vec::new();
    let ours = spec
        .options
        .iter()
        .filter(|o| !super::sync::is_sync_option(o));
    match source {
        Source::Passive => {
            opts.push("passive");
            for o in ours {
                // These would make sshfs open a connection of its own, or wait for one forever.
                if o == "reconnect" || o.starts_with("ssh_command=") || o.starts_with("directport=")
                {
                    tracing::warn!("mount {}: ignoring sshfs option '{o}', which cannot work over the launcher's channel", spec.remote);
                    continue;
                }
                opts.push(o);
            }
        }
        Source::Alias(_) => {
            opts.extend(ours.map(String::as_str));
            opts.extend([
                "reconnect",
                "ServerAliveInterval=15",
                "ServerAliveCountMax=3",
                "BatchMode=yes",
            ]);
        }
    }
    opts.join(",")
}

/// The remote command line for one mount.
/// `takeover`: this kernel's earlier sshfs for the mount point may still hang on a dead
/// channel (after a network drop); end it and take the mount point over.
pub(crate) fn command_line(
    spec: &MountSpec,
    sshfs: Option<&str>,
    source: &Source,
    takeover: bool,
) -> String {
    let (mode, src) = match source {
        Source::Passive => ("passive", ":/".to_string()),
        Source::Alias(alias) => ("alias", format!("{alias}:{}", spec.local)),
    };
    sh_command(
        &format!("{FUNCTIONS}{STATES_DIR}{WRAPPER}"),
        &[
            mode,
            &spec.remote,
            sshfs.unwrap_or(""),
            &src,
            &sshfs_options(spec, source),
            if takeover { "1" } else { "" },
        ],
    )
}

/// One mount's session: the wrapper runs on the remote; its stdio are pipes to us.
pub(crate) struct WrapperSession {
    /// Dropping it asks the master to close the session (so does our death, SIGKILL included):
    /// the wrapper then unmounts and cleans up.
    pub(crate) channel: MuxChannel,
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: pipe::Receiver,
}

/// Starts the wrapper for one mount in a session of the master.
pub(crate) async fn spawn(master: &Master, line: &str) -> Result<WrapperSession> {
    let (stdin_remote, stdin) = crate::ssh::pipe()?;
    let (stdout, stdout_remote) = crate::ssh::pipe()?;
    let (stderr, stderr_remote) = crate::ssh::pipe()?;
    let channel = master
        .open_session(line, stdin_remote, stdout_remote, stderr_remote)
        .await?;
    let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(crate::ssh::setup_error)?;
    Ok(WrapperSession {
        channel,
        stdin,
        stdout,
        stderr,
    })
}

/// What the wrapper says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WrapperEvent {
    Ready,
    Unmounted,
    Error {
        code: String,
        detail: String,
    },
    /// What the wrapper did on the way, for the log (a dead mount it cleaned, say).
    Note(String),
    /// Any other line (sshfs, ssh, login scripts).
    Output(String),
    /// The session's stderr ended: the wrapper is gone.
    Closed,
}

impl WrapperEvent {
    fn parse(line: &str) -> WrapperEvent {
        let Some(rest) = line.strip_prefix("sshpyk-mount ") else {
            return WrapperEvent::Output(line.to_string());
        };
        let (word, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "ready" => WrapperEvent::Ready,
            "unmounted" => WrapperEvent::Unmounted,
            "error" => {
                let (code, detail) = detail.split_once(' ').unwrap_or((detail, ""));
                WrapperEvent::Error {
                    code: code.to_string(),
                    detail: detail.to_string(),
                }
            }
            "note" => WrapperEvent::Note(detail.to_string()),
            _ => WrapperEvent::Output(line.to_string()),
        }
    }
}

/// Forwards the wrapper's stderr as events until it ends. A mount that ends while `stopping` is
/// still false (sshfs died, the connection dropped) is reported as a warning.
pub(crate) fn read_events(
    stderr: pipe::Receiver,
    what: String,
    stopping: Arc<AtomicBool>,
) -> mpsc::Receiver<WrapperEvent> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut from_wrapper = BufReader::new(stderr);
        let mut mounted = false;
        let mut last: Vec<String> = Vec::new();
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            match crate::bounded::read_line(&mut from_wrapper, &mut bytes, crate::bounded::MAX_LINE)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&bytes);
            let event = WrapperEvent::parse(line.trim_end_matches(['\n', '\r']));
            match &event {
                WrapperEvent::Note(text) => {
                    tracing::info!("{what}: {text}");
                    continue;
                }
                WrapperEvent::Output(text) => {
                    tracing::debug!("{what}: {text}");
                    last.push(text.clone());
                    if last.len() > 3 {
                        last.remove(0);
                    }
                }
                WrapperEvent::Ready => mounted = true,
                _ => tracing::debug!("{what}: {event:?}"),
            }
            // Other output is only kept while someone listens (during start); it is dropped
            // rather than ever blocking the session.
            let _ = match event {
                WrapperEvent::Output(_) => tx.try_send(event).map_err(drop),
                event => tx.send(event).await.map_err(drop),
            };
        }
        if mounted && !stopping.load(Ordering::SeqCst) {
            let said = if last.is_empty() {
                String::new()
            } else {
                format!(" ({})", last.join(" | "))
            };
            tracing::warn!("{what} ended: the remote sshfs or its ssh channel is gone{said}; the kernel no longer sees the local directory there");
        }
        let _ = tx.send(WrapperEvent::Closed).await;
    });
    rx
}

/// One clear error for a mount that could not be made.
pub(crate) fn mount_error(
    spec: &MountSpec,
    alias: &str,
    code: &str,
    detail: &str,
    output: &[String],
) -> Error {
    let what = format!(
        "cannot mount {} on '{alias}' at {}",
        spec.local, spec.remote
    );
    let said = if output.is_empty() {
        String::new()
    } else {
        format!(" ({})", output.join(" | "))
    };
    Error::Remote(match code {
        "no-sshfs" => format!(
            "{what}: sshfs not found on the remote: {detail}; install it there (e.g. `apt install sshfs`) or give its path with `sshpyk edit --remote-sshfs PATH`"
        ),
        "no-fuse" => format!(
            "{what}: FUSE is not usable on the remote: {detail}; install fuse3 there and make /dev/fuse usable, or remove the mount (`sshpyk edit --clear-mounts`)"
        ),
        "busy" => format!(
            "{what}: {detail} (another mount is active there: another kernel with the same mount?); stop it or unmount it on the remote, or choose another remote path with `sshpyk edit --mount-local-on-remote`"
        ),
        "not-empty" => format!(
            "{what}: the remote mount point {detail} and not a mount; empty it on the remote or choose another remote path with `sshpyk edit --mount-local-on-remote`"
        ),
        "not-dir" => format!(
            "{what}: {detail}; choose another remote path with `sshpyk edit --mount-local-on-remote`"
        ),
        "mkdir" => format!(
            "{what}: cannot create the mount point: {detail}; create it on the remote or choose another remote path"
        ),
        "sshfs-failed" => {
            let hint = if said.contains("allow_other") {
                "; `allow_other` needs `user_allow_other` in the remote's /etc/fuse.conf"
            } else {
                ""
            };
            format!("{what}: {detail}{said}{hint}")
        }
        "session" => format!(
            "{what}: the ssh session ended before the mount was ready{said}; run the launcher with -vv for details"
        ),
        _ => format!("{what}: {code} {detail}{said}"),
    })
}

/// For `list`: the remote's FUSE and sshfs as the mounts would find them.
#[derive(Debug, Clone)]
pub(crate) struct RemoteMountFacts {
    /// `Err(why)` when FUSE is not usable.
    pub(crate) fuse: std::result::Result<(), String>,
    /// Configured sshfs ("" = on PATH) → the path found, if any.
    pub(crate) sshfs: std::collections::BTreeMap<String, Option<String>>,
}

impl RemoteMountFacts {
    /// When the check itself failed.
    pub(crate) fn unknown(why: String) -> Self {
        RemoteMountFacts {
            fuse: Err(format!("could not check: {why}")),
            sshfs: Default::default(),
        }
    }
}

pub(crate) async fn probe(master: &Master, sshfs: &[String]) -> Result<RemoteMountFacts> {
    let sshfs: Vec<&str> = sshfs.iter().map(String::as_str).collect();
    let output = crate::ssh::shell::run_sh(master, &format!("{FUNCTIONS}{PROBE}"), &sshfs).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut facts = RemoteMountFacts {
        fuse: Err("the remote did not answer the FUSE check".into()),
        sshfs: Default::default(),
    };
    for line in stdout.lines() {
        if line == "sshpyk-fuse ok" {
            facts.fuse = Ok(());
        } else if let Some(why) = line.strip_prefix("sshpyk-fuse no ") {
            facts.fuse = Err(why.to_string());
        } else if let Some(rest) = line.strip_prefix("sshpyk-sshfs\t") {
            let (want, found) = rest.split_once('\t').unwrap_or((rest, ""));
            facts.sshfs.insert(
                want.to_string(),
                Some(found.to_string()).filter(|f| !f.is_empty()),
            );
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> MountSpec {
        MountSpec::parse(text).unwrap()
    }

    #[test]
    fn user_options_come_first_and_passive_drops_what_cannot_work() {
        let s = spec("/a:/b:ro,reconnect,follow_symlinks");
        assert_eq!(
            sshfs_options(&s, &Source::Passive),
            "passive,ro,follow_symlinks"
        );
        assert_eq!(
            sshfs_options(&s, &Source::Alias("back")),
            "ro,reconnect,follow_symlinks,reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,BatchMode=yes"
        );
    }

    #[test]
    fn wrapper_lines_become_events() {
        assert_eq!(
            WrapperEvent::parse("sshpyk-mount ready"),
            WrapperEvent::Ready
        );
        assert_eq!(
            WrapperEvent::parse("sshpyk-mount unmounted"),
            WrapperEvent::Unmounted
        );
        assert_eq!(
            WrapperEvent::parse("sshpyk-mount error not-empty /x is not empty"),
            WrapperEvent::Error {
                code: "not-empty".into(),
                detail: "/x is not empty".into()
            }
        );
        assert_eq!(
            WrapperEvent::parse("read: Connection reset"),
            WrapperEvent::Output("read: Connection reset".into())
        );
    }

    #[test]
    fn the_state_dir_is_private_or_refused() {
        use std::os::unix::fs::{chown, symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let states_dir = |path: &std::path::Path| {
            std::process::Command::new("sh")
                .args(["-c", &format!("{STATES_DIR}states_dir \"$1\""), "sh"])
                .arg(path)
                .status()
                .unwrap()
                .success()
        };
        let mode = |path: &std::path::Path| {
            std::fs::symlink_metadata(path)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let made = dir.path().join("made");
        assert!(states_dir(&made) && mode(&made) == 0o700);
        assert!(states_dir(&made), "an existing private dir is used");
        let link = dir.path().join("link");
        symlink(&made, &link).unwrap();
        assert!(!states_dir(&link), "a symlink, even to a private dir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!states_dir(&open), "a dir that is not 0700");
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(!states_dir(&theirs), "another user's dir");
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(!states_dir(&file));
    }

    #[test]
    fn the_wrapper_is_valid_sh() {
        for script in [
            format!("{FUNCTIONS}{STATES_DIR}{WRAPPER}"),
            format!("{FUNCTIONS}{PROBE}"),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
