//! sshpyk's private runtime directory (control sockets, logs, locks): 0700 and ours, or refused.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

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
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(Error::Local(format!(
                "cannot create runtime dir {}: {e}; set SSHPYK_RUNTIME_DIR to a writable directory",
                dir.display()
            )))
        }
    }
    let meta =
        std::fs::metadata(&dir).map_err(Error::io(format!("cannot stat {}", dir.display())))?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(Error::Local(format!(
            "runtime dir {} belongs to another user; remove it or set SSHPYK_RUNTIME_DIR",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("cannot make {} private", dir.display())))?;
    }
    Ok(dir)
}
