//! sshpyk's private runtime directory (control sockets, logs, locks): 0700 and ours, or refused.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `$SSHPYK_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/sshpyk`, else `/tmp/sshpyk-<uid>`. Short on
/// purpose: Unix socket paths are limited to about 100 bytes.
pub fn dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("SSHPYK_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d).join("sshpyk"),
            None => PathBuf::from(format!("/tmp/sshpyk-{}", nix::unistd::getuid())),
        },
    };
    ensure_private(&dir)?;
    Ok(dir)
}

/// Creates `dir` (0700) when missing, then judges the directory itself, never what a symlink
/// there points to (another user may have planted one in /tmp): it must be a real directory of
/// ours that nobody else can write to. One that others can only read is made 0700.
fn ensure_private(dir: &Path) -> Result<()> {
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
        match ensure_private(path) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{} was accepted", path.display()),
        }
    }

    #[test]
    fn the_runtime_dir_is_a_private_directory_of_ours_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        ensure_private(&made).unwrap();
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
        ensure_private(&readable).unwrap();
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
