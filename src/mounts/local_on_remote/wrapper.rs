//! The remote half of a mount: one session of the master (its mux protocol, no `ssh` process)
//! that runs a small POSIX sh
//! wrapper around the remote's sshfs. The wrapper checks, mounts, reports, waits for sshfs to
//! end for whatever reason, and then unmounts and removes what it created.
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
pub const SFTP_START: &[u8] = b"sshpyk-sftp-start\n";

/// Shell functions shared by the wrapper and `list`'s probe.
const FUNCTIONS: &str = r#"
fuse_check() {
  if [ ! -e /dev/fuse ]; then echo "/dev/fuse does not exist (load the fuse kernel module)"; return 1; fi
  if ! (exec 3<>/dev/fuse) 2>/dev/null; then echo "/dev/fuse cannot be opened by user $(id -un)"; return 1; fi
  if [ "$(id -u)" != 0 ] && ! command -v fusermount3 >/dev/null 2>&1 && ! command -v fusermount >/dev/null 2>&1; then
    echo "neither fusermount3 nor fusermount is installed (package fuse3)"; return 1
  fi
}
find_sshfs() {
  case $1 in
    "") command -v sshfs 2>/dev/null ;;
    "~/"*) p=$HOME/${1#"~/"}; [ -x "$p" ] && echo "$p" ;;
    *) [ -x "$1" ] && echo "$1" ;;
  esac
}
"#;

/// The directory of this user's mount states on the remote. Its name is known in advance (a
/// reconnected launcher's wrapper must find its predecessor's state), so it is made private
/// with `mkdir -m 700` and otherwise refused unless it is a real directory (not a symlink) of
/// this user's with mode 0700: its files say which processes to end. In a sticky /tmp, no one
/// else can swap it once checked.
const STATES_DIR: &str = r#"
states_dir() {
  mkdir -m 700 "$1" 2>/dev/null
  [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] || return 1
  case $(LC_ALL=C ls -ld "$1") in "drwx------ "*|"drwx------."*) ;; *) return 1 ;; esac
}
"#;

/// $1 mode (passive|alias), $2 mount point, $3 sshfs ("" = PATH), $4 source, $5 -o options.
const WRAPPER: &str = r#"
mode=$1 mnt=$2 want=$3 src=$4 opts=$5 takeover=$6 states=
trap '' HUP PIPE
tag() { printf 'sshpyk-mount %s\n' "$*" >&2; }
fail() { tag error "$@"; rmdir "$states" 2>/dev/null; exit 0; }
is_mounted() {
  if command -v mountpoint >/dev/null 2>&1; then mountpoint -q "$1" 2>/dev/null; return; fi
  mount 2>/dev/null | grep -F " on $1 " >/dev/null
}
is_dead() { LC_ALL=C ls -d "$1" 2>&1 >/dev/null | grep 'not connected' >/dev/null; }
unmount() {
  for u in fusermount3 fusermount; do
    if command -v $u >/dev/null 2>&1 && $u -u -z "$1" 2>/dev/null; then return 0; fi
  done
  umount -l "$1" 2>/dev/null || umount "$1" 2>/dev/null
}
case $mnt in "~/"*) mnt=$HOME/${mnt#"~/"};; esac
sshfs=$(find_sshfs "$want") || sshfs=
if [ -z "$sshfs" ]; then
  if [ -z "$want" ]; then fail no-sshfs "sshfs is not on the remote PATH ($PATH)"; fi
  fail no-sshfs "$want does not exist or is not executable"
fi
why=$(fuse_check) || fail no-fuse "$why"
# Who serves this mount point: "wrapper-pid sshfs-pid created-top-dir", in a private dir.
states=${TMPDIR:-/tmp}/sshpyk-mounts-$(id -u)
states_dir "$states" || fail state "$states is not a private directory of $(id -un) (a directory, not a symlink, with mode 0700); remove it"
state=$states/$(printf %s "$mnt" | cksum | cut -d' ' -f1)
save_state() {
  # Another mount's cleanup may have just removed the (then empty) directory.
  tries=0
  until { states_dir "$states" && echo "$*" > "$state"; } 2>/dev/null; do
    tries=$((tries + 1)); [ $tries -lt 5 ] || return 1
  done
}
top=
if [ -n "$takeover" ] && [ -f "$state" ]; then
  # Reconnected after a network drop: the previous sshfs of this kernel hangs on a dead
  # channel. Claim the mount point first, so that its wrapper leaves the cleanup to us.
  read -r old_wrapper old_sshfs top < "$state"
  save_state "$$ - $top"
  kill -TERM "$old_sshfs" 2>/dev/null
  n=0
  while kill -0 "$old_sshfs" 2>/dev/null && [ $n -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
  kill -KILL "$old_sshfs" 2>/dev/null
  if is_mounted "$mnt" || is_dead "$mnt"; then unmount "$mnt"; fi
fi
n=0 removed=
while :; do
  # A mount whose sshfs died shows as dead only once FUSE's cached attributes expire: look
  # again on every turn.
  if is_dead "$mnt" && unmount "$mnt" && [ -z "$removed" ]; then
    removed=1
    tag note "removed a stale mount left at $mnt by an earlier run"
  fi
  if ! is_mounted "$mnt"; then
    # The cache may have expired just now, between the two looks: then it is dead, not gone.
    is_dead "$mnt" || break
  fi
  # An earlier run's sshfs may be unmounting right now.
  if [ $n -ge 30 ]; then fail busy "$mnt is already a mount point"; fi
  sleep 0.1; n=$((n + 1))
done
if [ -e "$mnt" ] || [ -L "$mnt" ]; then
  [ -d "$mnt" ] || fail not-dir "$mnt exists and is not a directory"
  listing=$(ls -A "$mnt" 2>&1) || fail not-dir "$listing"
  [ -z "$listing" ] || fail not-empty "$mnt is not empty"
else
  d=$mnt
  while [ ! -e "$d" ] && [ ! -L "$d" ]; do top=$d; d=$(dirname "$d"); done
  out=$(mkdir -p "$mnt" 2>&1) || fail mkdir "$out"
fi
cleanup() {
  # No state: it could not be saved, and nobody took over.
  read -r owner _ < "$state" 2>/dev/null || owner=$$
  # Taken over by the wrapper of a reconnected launcher: the mount point is its now.
  [ "$owner" = $$ ] || exit 0
  rm -f "$state"
  rmdir "$states" 2>/dev/null
  if is_mounted "$mnt" || is_dead "$mnt"; then unmount "$mnt"; fi
  if [ -n "$top" ]; then
    d=$mnt
    while rmdir "$d" 2>/dev/null && [ "$d" != "$top" ]; do d=$(dirname "$d"); done
  fi
  tag unmounted
}
exec 3<&0
pid= watch=
trap 'kill -TERM $pid $watch 2>/dev/null' TERM INT
if [ "$mode" = passive ]; then
  printf 'sshpyk-sftp-start\n'
  "$sshfs" -f -o "$opts" "$src" "$mnt" <&3 3<&- &
  pid=$!
else
  "$sshfs" -f -o "$opts" "$src" "$mnt" </dev/null 3<&- &
  pid=$!
  # The session's stdin ends when the launcher does (or lets go): then unmount.
  cat <&3 >/dev/null 2>&1 &
  watch=$!
fi
exec 3<&-
save_state "$$ $pid $top" || tag note "cannot record the mount in $states; a reconnection will not take it over"
ready=
while kill -0 $pid 2>/dev/null; do
  if is_mounted "$mnt"; then ready=1; tag ready; break; fi
  sleep 0.1
done
if [ -n "$watch" ]; then
  while kill -0 $pid 2>/dev/null && kill -0 $watch 2>/dev/null; do sleep 0.5; done
  kill -TERM $pid $watch 2>/dev/null
fi
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
if [ -z "$ready" ]; then tag error sshfs-failed "sshfs exited with status $rc before the mount was ready"; fi
cleanup
"#;

/// Runs on the remote for `list`: is FUSE usable, and where is each configured sshfs.
const PROBE: &str = r#"
if why=$(fuse_check); then echo "sshpyk-fuse ok"; else printf 'sshpyk-fuse no %s\n' "$why"; fi
for s in "$@"; do printf 'sshpyk-sshfs\t%s\t%s\n' "$s" "$(find_sshfs "$s")"; done
"#;

/// How the remote's sshfs reaches the exported directory.
pub enum Source<'a> {
    /// SFTP over the session itself, served by the launcher.
    Passive,
    /// The remote's own ssh config has an alias back to this machine.
    Alias(&'a str),
}

/// The sshfs `-o` list: the user's options first, then ours.
pub fn sshfs_options(spec: &MountSpec, source: &Source) -> String {
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
pub fn command_line(
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
pub struct WrapperSession {
    /// Dropping it asks the master to close the session (so does our death, SIGKILL included):
    /// the wrapper then unmounts and cleans up.
    pub channel: MuxChannel,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: pipe::Receiver,
}

/// Starts the wrapper for one mount in a session of the master.
pub async fn spawn(master: &Master, line: &str) -> Result<WrapperSession> {
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
pub enum WrapperEvent {
    Ready,
    Unmounted,
    Error {
        code: String,
        detail: String,
    },
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
            "note" => WrapperEvent::Output(format!("note: {detail}")),
            _ => WrapperEvent::Output(line.to_string()),
        }
    }
}

/// Forwards the wrapper's stderr as events until it ends. A mount that ends while `stopping` is
/// still false (sshfs died, the connection dropped) is reported as a warning.
pub fn read_events(
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
                WrapperEvent::Output(text) if text.starts_with("note: ") => {
                    tracing::info!("{what}: {}", &text[6..])
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
pub fn mount_error(
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
pub struct RemoteMountFacts {
    /// `Err(why)` when FUSE is not usable.
    pub fuse: std::result::Result<(), String>,
    /// Configured sshfs ("" = on PATH) → the path found, if any.
    pub sshfs: std::collections::BTreeMap<String, Option<String>>,
}

impl RemoteMountFacts {
    /// When the check itself failed.
    pub fn unknown(why: String) -> Self {
        RemoteMountFacts {
            fuse: Err(format!("could not check: {why}")),
            sshfs: Default::default(),
        }
    }
}

pub async fn probe(master: &Master, sshfs: &[String]) -> Result<RemoteMountFacts> {
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
