//! Cloud credentials at rest: one JSON object per mount in a 0600 file, in a 0700 directory
//! under sshpyk's config dir (`$SSHPYK_CONFIG_DIR`, else `$XDG_CONFIG_HOME/sshpyk`, else
//! `~/.config/sshpyk`). kernel.json holds only the file's name.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn dir() -> Result<PathBuf> {
    let base = match std::env::var_os("SSHPYK_CONFIG_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => dirs::config_dir()
            .ok_or_else(|| {
                Error::Local("cannot find your config dir: set HOME or SSHPYK_CONFIG_DIR".into())
            })?
            .join("sshpyk"),
    };
    let dir = base.join("secrets");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
        .map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(Error::io(format!("cannot stat {}", dir.display())))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(Error::Local(format!(
            "{} is not a directory of yours; remove it or set SSHPYK_CONFIG_DIR",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("cannot make {} private", dir.display())))?;
    }
    Ok(dir)
}

fn path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::Invalid(format!(
            "secrets file name '{name}' in kernel.json is invalid; add the mount again"
        )));
    }
    Ok(dir()?.join(name))
}

/// Writes `secrets` to a new 0600 file (created with that mode, never widened); returns its name.
pub(crate) fn store(kernel: &str, secrets: &BTreeMap<String, String>) -> Result<String> {
    let name = format!("{kernel}-{}.json", uuid::Uuid::new_v4().simple());
    let path = path(&name)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io(format!("cannot create {}", path.display())))?;
    let text = serde_json::to_vec(secrets).expect("a string map serializes");
    if let Err(e) = file.write_all(&text) {
        let _ = std::fs::remove_file(&path);
        return Err(Error::io(format!("cannot write {}", path.display()))(e));
    }
    Ok(name)
}

pub(crate) fn load(name: &str) -> Result<BTreeMap<String, String>> {
    let path = path(name)?;
    let text = std::fs::read(&path).map_err(|e| {
        Error::Local(format!(
            "cannot read the mount's secrets {}: {e}; remove the mount and add it again with --creds",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::Local(format!(
            "the mount's secrets {} cannot be read ({e}); remove the mount and add it again",
            path.display()
        ))
    })
}

/// Removes a secrets file; one already gone is fine.
pub(crate) fn remove(name: &str) {
    if let Ok(path) = path(name) {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// A JSON object of strings from `--creds FILE` or `--creds -` (stdin).
pub(crate) fn read_creds_arg(arg: &str) -> Result<BTreeMap<String, String>> {
    let (what, text) = if arg == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(Error::io("cannot read --creds from stdin"))?;
        ("stdin".to_string(), text)
    } else {
        let text = std::fs::read_to_string(arg)
            .map_err(|e| Error::Invalid(format!("cannot read --creds {arg}: {e}")))?;
        (arg.to_string(), text)
    };
    serde_json::from_str(&text).map_err(|_| {
        Error::Invalid(format!(
            "--creds {what} is not a JSON object of strings (e.g. {{\"secret_access_key\": \"...\"}})"
        ))
    })
}

/// Removes the secrets of the mounts in `old` that `new` no longer has.
pub(crate) fn remove_dropped(old: &[super::CloudMount], new: &[super::CloudMount]) {
    for mount in old {
        if !new.iter().any(|m| m.secrets == mount.secrets) {
            remove(&mount.secrets);
        }
    }
}

/// The secrets files that the kernel.json in `kernelspec_dir` names, read as plain JSON: found
/// even when its settings no longer parse.
pub(crate) fn named_in(kernelspec_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(kernelspec_dir.join("kernel.json")) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    json["metadata"]["sshpyk"]["cloud_mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["secrets"].as_str())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}
