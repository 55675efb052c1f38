//! sshpyk's private runtime directory (control sockets, logs, locks): 0700 and ours, or refused.

use std::fs::OpenOptions;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `$SSHPYK_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/sshpyk`, else `$TMPDIR/sshpyk-<uid>` (`/tmp`).
/// Another user can create that last one first (a denial of service): then, and from then on,
/// a directory of an unpredictable name there, found again through a record in our home. Short
/// on purpose: Unix socket paths are limited to about 100 bytes.
pub(crate) fn dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SSHPYK_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(d);
        ensure_private(&dir, Chosen::ByUser)?;
        return Ok(dir);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(d).join("sshpyk");
        ensure_private(&dir, Chosen::Ours)?;
        return Ok(dir);
    }
    let prefix = format!("sshpyk-{}", nix::unistd::getuid());
    let fixed = std::env::temp_dir().join(&prefix);
    let Some(record) = record_path() else {
        ensure_private(&fixed, Chosen::Ours)?;
        return Ok(fixed);
    };
    if !record.exists() {
        match ensure_private(&fixed, Chosen::Ours) {
            Ok(()) => return Ok(fixed),
            Err(e) => tracing::debug!("{e}; using a directory of an unpredictable name"),
        }
    }
    recorded(&record, &format!("{prefix}-"))
}

/// `~/.cache/sshpyk/runtime-<host>` (per host: a home may be shared); none without a HOME.
fn record_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(PathBuf::from(home).join(format!(".cache/sshpyk/runtime-{host}")))
}

/// The directory that `record` names while it is still a private one of ours, else a new one
/// (`mkdtemp`) that it names from now on. Under a lock: every process must find the same one.
fn recorded(record: &Path, prefix: &str) -> Result<PathBuf> {
    let shown = record.display();
    let fail = |e: std::io::Error| {
        Error::Local(format!(
            "cannot use {shown}: {e}; set SSHPYK_RUNTIME_DIR to a private directory"
        ))
    };
    if let Some(parent) = record.parent() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(parent)
            .map_err(fail)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(record)
        .map_err(fail)?;
    let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail(e.into()))?;
    let mut named = String::new();
    file.read_to_string(&mut named).map_err(fail)?;
    let named = PathBuf::from(named.trim_end());
    let ours = named
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(prefix));
    if ours && ensure_private(&named, Chosen::Ours).is_ok() {
        return Ok(named);
    }
    let made = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .map_err(fail)?
        .keep();
    file.set_len(0).map_err(fail)?;
    file.rewind().map_err(fail)?;
    file.write_all(made.as_os_str().as_bytes()).map_err(fail)?;
    Ok(made)
}

/// Who named the directory: a directory the user named may be anything (`$HOME`), so it is
/// never made private behind their back; one of sshpyk's own names is.
#[derive(Clone, Copy, PartialEq)]
enum Chosen {
    ByUser,
    Ours,
}

/// Creates `dir` (0700) when missing, then judges the directory itself, never what a symlink
/// there points to (another user may have planted one in /tmp): it must be a real directory of
/// ours that nobody else can write to. One of ours that others can only read is made 0700; one
/// the user named is refused.
fn ensure_private(dir: &Path, chosen: Chosen) -> Result<()> {
    let shown = dir.display();
    let refuse = |why: &str, fix: &str| {
        Err(Error::Local(format!(
            "runtime dir {shown} {why}; {fix}, or set SSHPYK_RUNTIME_DIR to a private directory"
        )))
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        return Err(Error::Local(format!(
            "cannot create runtime dir {shown}: {e}; set SSHPYK_RUNTIME_DIR to a writable directory"
        )));
    }
    let kind = std::fs::symlink_metadata(dir)
        .map_err(Error::io(format!("cannot stat {shown}")))?
        .file_type();
    if kind.is_symlink() {
        return refuse("is a symlink", &format!("remove it (rm {shown})"));
    }
    if !kind.is_dir() {
        return refuse("is not a directory", &format!("remove it (rm {shown})"));
    }
    // Checked again through the handle: a symlink swapped in meanwhile fails to open.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(Error::io(format!("cannot open {shown}")))?;
    let meta = handle
        .metadata()
        .map_err(Error::io(format!("cannot stat {shown}")))?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return refuse(
            &format!("belongs to another user (uid {})", meta.uid()),
            "have it removed",
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(
            &format!("can be written by others (mode {mode:o})"),
            &format!("remove it (rm -r {shown})"),
        );
    }
    if mode != 0o700 && chosen == Chosen::ByUser {
        return Err(Error::Local(format!(
            "SSHPYK_RUNTIME_DIR {shown} is mode {mode:o}, not private; name a directory that does not exist yet (sshpyk makes it 0700), or make it private (chmod 700 {shown})"
        )));
    }
    if mode != 0o700 {
        handle
            .set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("cannot make {shown} private")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink};

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn refused(path: &Path) -> String {
        match ensure_private(path, Chosen::Ours) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{} was accepted", path.display()),
        }
    }

    #[test]
    fn the_runtime_dir_is_a_private_directory_of_ours_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        ensure_private(&made, Chosen::Ours).unwrap();
        assert_eq!(mode(&made), 0o700);

        let link = dir.path().join("link");
        symlink(&made, &link).unwrap();
        let error = refused(&link);
        assert!(error.contains("is a symlink"), "{error}");
        assert!(error.contains(&link.display().to_string()), "{error}");
        assert!(!error.contains('\n'), "{error}");

        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(refused(&shared).contains("can be written by others"));

        // Only readable by others: nobody else could have put anything there.
        let readable = dir.path().join("readable");
        std::fs::create_dir(&readable).unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Named by the user (SSHPYK_RUNTIME_DIR=$HOME): refused, never chmod'ed.
        let error = match ensure_private(&readable, Chosen::ByUser) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted"),
        };
        assert!(error.contains("is mode 755, not private"), "{error}");
        assert_eq!(mode(&readable), 0o755);
        ensure_private(&readable, Chosen::Ours).unwrap();
        assert_eq!(mode(&readable), 0o700);

        if nix::unistd::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(refused(&theirs).contains("belongs to another user"));
        }
    }
}
