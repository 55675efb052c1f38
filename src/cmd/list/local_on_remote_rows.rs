//! `list`'s rows for a kernel's mounts of local directories on the remote.

use super::{check, Check, Status};
use crate::mounts::local_on_remote::{self, RemoteMountFacts};
use crate::settings::Settings;

/// Rows for each mount: the local directory and its confinement here, sshfs and FUSE there
/// (`facts` is `None` when the host could not be checked).
pub(super) fn checks(settings: &Settings, facts: Option<&RemoteMountFacts>) -> Vec<Check> {
    let mut rows = Vec::new();
    if settings.mounts.is_empty() {
        return rows;
    }
    // sshfs and FUSE on the remote matter to lazy mounts only.
    let mut lazy = false;
    for m in &settings.mounts {
        let options = if m.options.is_empty() {
            String::new()
        } else {
            format!(" ({})", m.options.join(","))
        };
        rows.push(check(
            Status::Info,
            "mount",
            format!("{} on remote {}{options}", m.local, m.remote),
        ));
        let mode = local_on_remote::mode(m);
        lazy |= matches!(mode, Ok(local_on_remote::Mode::Lazy { .. }));
        rows.push(match mode {
            Ok(mode) => check(Status::Info, "mount mode", mode.to_string()),
            Err(why) => check(Status::Error, "mount mode", why),
        });
        let local = local_on_remote::local_facts(&settings.mount_settings(), m);
        rows.push(match local.local_dir {
            Ok(()) => check(Status::Ok, "mount local dir", format!("{} exists", m.local)),
            Err(why) => check(Status::Error, "mount local dir", why),
        });
        rows.push(match local.confinement {
            Ok(how) => check(Status::Ok, "mount confinement", how),
            Err(why) => check(Status::Warning, "mount confinement", why),
        });
    }
    if let (Some(facts), true) = (facts, lazy) {
        rows.extend(remote_checks(settings, facts));
    }
    rows
}

/// sshfs and FUSE on the remote, as the mounts will find them.
fn remote_checks(settings: &Settings, facts: &RemoteMountFacts) -> [Check; 2] {
    let want = settings.remote_sshfs.clone().unwrap_or_default();
    let shown = if want.is_empty() {
        "sshfs"
    } else {
        want.as_str()
    };
    let sshfs = match facts.sshfs.get(&want) {
        Some(Some(path)) => check(Status::Ok, "remote sshfs", path.clone()),
        Some(None) if want.is_empty() => check(
            Status::Error,
            "remote sshfs",
            "sshfs not found on the remote PATH; install it there or set --remote-sshfs with `sshpyk edit`",
        ),
        Some(None) => check(
            Status::Error,
            "remote sshfs",
            format!("{shown} not found or not executable on the remote; fix --remote-sshfs with `sshpyk edit`"),
        ),
        None => check(
            Status::Error,
            "remote sshfs",
            format!("could not check {shown}: {}", facts.fuse.clone().err().unwrap_or_default()),
        ),
    };
    let fuse = match &facts.fuse {
        Ok(()) => check(Status::Ok, "remote FUSE", "/dev/fuse is usable"),
        Err(why) => check(Status::Error, "remote FUSE", why.clone()),
    };
    [sshfs, fuse]
}
