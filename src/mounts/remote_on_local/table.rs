//! This machine's mount table: what is mounted where, whether a mount is dead, who holds it,
//! and unmounting through the FUSE helpers.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, Result};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) fstype: String,
    pub(crate) source: String,
}

/// The mount at exactly `path` (absolute, symlinks resolved), if any.
pub(crate) fn find(path: &Path) -> Option<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&table, path)
}

fn parse_mountinfo(table: &str, path: &Path) -> Option<MountEntry> {
    // The last mount on a path is the one in effect.
    table.lines().rev().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mount_point = unescape(mount.split(' ').nth(4)?);
        if Path::new(&mount_point) != path {
            return None;
        }
        let mut fs = fs.split(' ');
        Some(MountEntry {
            fstype: fs.next()?.to_string(),
            source: unescape(fs.next()?),
        })
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A FUSE mount whose server is gone answers "Transport endpoint is not connected".
pub(crate) fn is_dead(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// `path` made absolute with its parent's symlinks resolved; the last component is left alone,
/// since a dead mount there cannot even be looked at.
pub(crate) fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .map_err(Error::io(format!("cannot resolve {}", path.display())))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(Error::Invalid(format!(
            "{} cannot be a mount point; give a directory below /",
            path.display()
        )));
    };
    let parent = parent.canonicalize().map_err(|e| {
        Error::Invalid(format!(
            "the parent directory of mount point {} is not usable ({e}); create it first",
            path.display()
        ))
    })?;
    Ok(parent.join(name))
}

/// Processes whose working directory, root, executable or open files are under `path`, as
/// "pid (name)".
pub(crate) fn holders(path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let proc_dir = entry.path();
        let links = ["cwd", "root", "exe"]
            .iter()
            .map(|l| proc_dir.join(l))
            .chain(
                std::fs::read_dir(proc_dir.join("fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|fd| fd.path()),
            );
        let holds = links
            .filter_map(|link| std::fs::read_link(link).ok())
            .any(|target| target.starts_with(path));
        if holds {
            let name = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", name.trim()));
        }
    }
    found
}

/// Why an unmount did not happen.
#[derive(Debug)]
pub(crate) enum UnmountError {
    /// Something still uses the mount.
    Busy,
    /// No unmount helper could be run.
    NoHelper,
    /// The helper refused, with its message.
    Failed(String),
}

/// Unmounts `path` with `fusermount3 -u`, else `fusermount -u`, else `umount` (macOS, or root
/// without the FUSE helpers). `lazy` detaches a busy mount.
pub(crate) async fn unmount(path: &Path, lazy: bool) -> std::result::Result<(), UnmountError> {
    let helpers: [(&str, &[&str]); 3] = [
        ("fusermount3", if lazy { &["-u", "-z"] } else { &["-u"] }),
        ("fusermount", if lazy { &["-u", "-z"] } else { &["-u"] }),
        ("umount", if lazy { &["-l"] } else { &[] }),
    ];
    for (helper, flags) in helpers {
        let output = tokio::process::Command::new(helper)
            .args(flags)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await;
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(UnmountError::Failed(format!("{helper}: {e}"))),
        };
        if output.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if message.contains("busy") {
            return Err(UnmountError::Busy);
        }
        return Err(UnmountError::Failed(message));
    }
    Err(UnmountError::NoHelper)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 0:50 / /mnt/my\\040data rw,nosuid,nodev - fuse.sshfs gpu:/data rw,user_id=0
96 22 0:51 / /mnt/x rw - fuse.sshfs old:/ rw
97 22 0:52 / /mnt/x rw - fuse.sshfs new:/y rw
";

    #[test]
    fn finds_escaped_mount_points_and_the_mount_in_effect() {
        let entry = parse_mountinfo(TABLE, Path::new("/mnt/my data")).unwrap();
        assert_eq!(entry.fstype, "fuse.sshfs");
        assert_eq!(entry.source, "gpu:/data");
        assert_eq!(
            parse_mountinfo(TABLE, Path::new("/mnt/x")).unwrap().source,
            "new:/y"
        );
        assert!(parse_mountinfo(TABLE, Path::new("/mnt")).is_none());
    }
}
