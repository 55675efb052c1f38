//! The local side of a synced copy: which paths belong to it (excludes), what is there now, and
//! changes made to it, every one through the confined export ([`super::super::export`]), so
//! that nothing the remote says leads out of the directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use nix::fcntl::OFlag;
use nix::sys::stat::{futimens, Mode};
use nix::sys::time::TimeSpec;

use super::super::export::Export;
use super::wire::{Kind, Meta};

/// Never synced unless the user says otherwise (`no-default-excludes`): what Python, git,
/// Jupyter and virtualenvs write, which is not the project's and would flow back and forth.
pub(crate) const DEFAULT_EXCLUDES: &[&str] = &[
    "__pycache__/",
    "*.pyc",
    ".git/",
    ".ipynb_checkpoints/",
    ".venv/",
    "venv/",
    ".tox/",
    ".mypy_cache/",
    ".pytest_cache/",
];

/// What a sync leaves out: the defaults, the project's root `.gitignore`, the user's patterns
/// (gitignore syntax, `exclude=` in the mount spec), and virtualenvs (a `pyvenv.cfg` inside).
pub(crate) struct Excludes {
    matcher: Gitignore,
}

impl Excludes {
    pub(crate) fn new(root: &Path, defaults: bool, user: &[String]) -> Result<Excludes, String> {
        let mut builder = GitignoreBuilder::new(root);
        if defaults {
            for pattern in DEFAULT_EXCLUDES {
                builder.add_line(None, pattern).expect("valid pattern");
            }
        }
        let gitignore = root.join(".gitignore");
        if gitignore.is_file() {
            if let Some(e) = builder.add(&gitignore) {
                tracing::warn!(
                    "{}: {e}; some of its patterns are not used",
                    gitignore.display()
                );
            }
        }
        for pattern in user {
            builder
                .add_line(None, pattern)
                .map_err(|e| format!("exclude pattern '{pattern}' is invalid: {e}"))?;
        }
        let matcher = builder.build().map_err(|e| e.to_string())?;
        Ok(Excludes { matcher })
    }

    /// Whether `path` (relative, `/`-separated) or a directory above it is left out.
    pub(crate) fn excludes(&self, path: &str, is_dir: bool) -> bool {
        self.matcher
            .matched_path_or_any_parents(path, is_dir)
            .is_ignore()
    }
}

/// Every entry under `root` that is not excluded, links not followed.
pub(crate) fn scan(root: &Path, excludes: &Excludes) -> BTreeMap<String, Meta> {
    let mut found = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue; // not UTF-8: the protocol's paths are text
            };
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let Ok(md) = entry.metadata() else { continue };
            let Some(meta) = meta_of(&md, || std::fs::read_link(entry.path()).ok()) else {
                continue;
            };
            if excludes.excludes(&path, meta.kind() == Kind::Dir) {
                continue;
            }
            if meta.kind() == Kind::Dir {
                if entry.path().join("pyvenv.cfg").exists() {
                    continue;
                }
                todo.push(path.clone());
            }
            found.insert(path, meta);
        }
    }
    found
}

fn meta_of(md: &std::fs::Metadata, target: impl FnOnce() -> Option<PathBuf>) -> Option<Meta> {
    let ft = md.file_type();
    let mode = md.mode() & 0o7777;
    if ft.is_symlink() {
        let target = target()?.to_str()?.to_string();
        Some(Meta(Kind::Link, 0, 0, 0, Some(target)))
    } else if ft.is_dir() {
        Some(Meta(Kind::Dir, 0, 0, mode, None))
    } else if ft.is_file() {
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        Some(Meta(Kind::File, md.size(), mtime, mode, None))
    } else {
        None
    }
}

/// A file's bytes and what they are, read through the export (never through a link).
pub(crate) fn read_file(export: &Export, path: &str) -> std::io::Result<(Meta, Vec<u8>)> {
    let mut file = export.open_file(path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let md = file.metadata()?;
    let mut meta = meta_of(&md, || None).ok_or_else(|| std::io::Error::other("not a file"))?;
    meta.1 = data.len() as u64;
    Ok((meta, data))
}

/// Writes a file the remote changed: to a temporary name, then renamed over, with the remote's
/// mtime, so that both sides then see the same thing.
pub(crate) fn write_file(
    export: &Export,
    path: &str,
    meta: &Meta,
    data: &[u8],
) -> std::io::Result<()> {
    let tmp = match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.sshpyk-tmp-{name}"),
        None => format!(".sshpyk-tmp-{path}"),
    };
    let _ = export.remove(&tmp);
    let mut file = export.open_file(
        &tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        meta.3 & 0o777,
    )?;
    file.write_all(data)?;
    let mtime = TimeSpec::new(
        meta.2.div_euclid(1_000_000_000),
        meta.2.rem_euclid(1_000_000_000),
    );
    futimens(&file, &mtime, &mtime)?;
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(meta.3 & 0o7777))?;
    drop(file);
    if export
        .stat(path, false)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    {
        export.rmdir(path)?;
    }
    export.rename(&tmp, path, true)
}

/// What is at `path` now, through the export.
pub(crate) fn stat(export: &Export, path: &str) -> Option<Meta> {
    let st = export.stat(path, false).ok()?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Link,
        _ => return None,
    };
    let target = (kind == Kind::Link)
        .then(|| export.readlink(path).ok()?.into_string().ok())
        .flatten();
    let mtime = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec;
    let size = if kind == Kind::File {
        st.st_size as u64
    } else {
        0
    };
    let mtime = if kind == Kind::File { mtime } else { 0 };
    Some(Meta(kind, size, mtime, st.st_mode & 0o7777, target))
}

/// Removes what is at `path` (a directory only once empty of what we sync).
pub(crate) fn remove(export: &Export, path: &str) -> std::io::Result<()> {
    match stat(export, path) {
        None => Ok(()),
        Some(m) if m.kind() == Kind::Dir => export.rmdir(path),
        Some(_) => export.remove(path),
    }
}
