//! The exported directory as the SFTP server sees it: every path the remote sends is resolved by
//! the kernel with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to a handle of
//! the export, so `..`, absolute paths and symlinks that lead out of it fail (EXDEV) whatever
//! the remote asks. Operations on a name (remove, mkdir, rename, symlink...) act on the last
//! component inside a parent directory that was itself resolved that way, and never follow a
//! link in that last component.
//!
//! A read-only export refuses every change here, before any system call (EROFS).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::sys::statvfs::Statvfs;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

/// What a `setstat` may change; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) size: Option<u64>,
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    /// (atime, mtime) in seconds since the epoch.
    pub(crate) times: Option<(i64, i64)>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// One exported local directory.
#[derive(Debug)]
pub(crate) struct Export {
    root: OwnedFd,
    read_only: bool,
}

impl Export {
    /// Opens the export; fails when it is not a directory or when this kernel has no openat2
    /// (Linux < 5.6), since nothing could then be served confined.
    pub(crate) fn open(path: &Path, read_only: bool) -> io::Result<Export> {
        let root = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let export = Export { root, read_only };
        export.resolve(".", OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok(export)
    }

    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Resolves `path` (relative to the export; a leading `/` is the export root) confined to
    /// the export, and opens it with `flags`.
    pub(crate) fn resolve(&self, path: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let rel = relative(path);
        // openat2 is strict: O_PATH takes no other access flags, and a mode only with O_CREAT.
        let mut flags = flags | OFlag::O_CLOEXEC;
        if !flags.contains(OFlag::O_PATH) {
            flags |= OFlag::O_NOCTTY;
        }
        let mut how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        if flags.contains(OFlag::O_CREAT) {
            how = how.mode(Mode::from_bits_truncate(mode & 0o7777));
        }
        // EAGAIN: a concurrent rename raced the `..` check; the kernel asks us to retry.
        let mut attempts = 0;
        loop {
            match openat2(&self.root, rel, how) {
                Err(Errno::EAGAIN) if attempts < 8 => attempts += 1,
                result => return result.map_err(io::Error::from),
            }
        }
    }

    /// The directory holding `path`'s last component (resolved confined), and that component.
    fn parent_of(&self, path: &str) -> io::Result<(OwnedFd, CString)> {
        let (parent, name) = split_last(path)?;
        let dir = self.resolve(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok((dir, name))
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::from_raw_os_error(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// `stat` (following a final symlink, confined) or `lstat`.
    pub(crate) fn stat(&self, path: &str, follow: bool) -> io::Result<FileStat> {
        let mut flags = OFlag::O_PATH;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let fd = self.resolve(path, flags, 0)?;
        Ok(nix::sys::stat::fstat(&fd)?)
    }

    /// Opens a file with open(2)-style access flags (O_RDONLY/O_WRONLY/O_RDWR, O_CREAT,
    /// O_TRUNC, O_EXCL, O_APPEND). FIFOs never block the open.
    pub(crate) fn open_file(&self, path: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        let changes = OFlag::O_WRONLY
            | OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_EXCL
            | OFlag::O_APPEND;
        if flags.intersects(changes) {
            self.writable()?;
        }
        let fd = self.resolve(
            path,
            flags | OFlag::O_NONBLOCK,
            safe_mode(mode, false).bits(),
        )?;
        Ok(File::from(fd))
    }

    pub(crate) fn open_dir(&self, path: &str) -> io::Result<OwnedFd> {
        self.resolve(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
    }

    /// The text of a symlink (never followed).
    pub(crate) fn readlink(&self, path: &str) -> io::Result<OsString> {
        let fd = self.resolve(path, OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)?;
        Ok(nix::fcntl::readlinkat(&fd, "")?)
    }

    /// Applies `changes` to `path` (following a final symlink, confined), in OpenSSH's order.
    pub(crate) fn set_path(&self, path: &str, changes: &Changes) -> io::Result<()> {
        self.writable()?;
        if changes.is_empty() {
            // Still report a missing file as such.
            self.stat(path, true)?;
            return Ok(());
        }
        let fd = self.resolve(path, OFlag::O_PATH, 0)?;
        let is_dir = nix::sys::stat::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
        // The file is already resolved: /proc/self/fd/N names exactly that inode.
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let proc_path = proc_path.as_str();
        if let Some(size) = changes.size {
            nix::unistd::truncate(proc_path, size as libc::off_t)?;
        }
        if let Some(mode) = changes.mode {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                proc_path,
                safe_mode(mode, is_dir),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
        }
        if let Some((atime, mtime)) = changes.times {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                proc_path,
                &TimeSpec::new(atime, 0),
                &TimeSpec::new(mtime, 0),
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )?;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                proc_path,
                changes.uid.map(Uid::from_raw),
                changes.gid.map(Gid::from_raw),
                AtFlags::empty(),
            )?;
        }
        Ok(())
    }

    /// Applies `changes` to an open file or directory.
    pub(crate) fn set_fd(&self, fd: impl AsFd, changes: &Changes) -> io::Result<()> {
        self.writable()?;
        let fd = fd.as_fd();
        if let Some(size) = changes.size {
            nix::unistd::ftruncate(fd, size as libc::off_t)?;
        }
        if let Some(mode) = changes.mode {
            let is_dir = nix::sys::stat::fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
            nix::sys::stat::fchmod(fd, safe_mode(mode, is_dir))?;
        }
        if let Some((atime, mtime)) = changes.times {
            nix::sys::stat::futimens(fd, &TimeSpec::new(atime, 0), &TimeSpec::new(mtime, 0))?;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            nix::unistd::fchown(
                fd,
                changes.uid.map(Uid::from_raw),
                changes.gid.map(Gid::from_raw),
            )?;
        }
        Ok(())
    }

    pub(crate) fn remove(&self, path: &str) -> io::Result<()> {
        self.writable()?;
        let (dir, name) = self.parent_of(path)?;
        nix::unistd::unlinkat(
            &dir,
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?;
        Ok(())
    }

    pub(crate) fn mkdir(&self, path: &str, mode: u32) -> io::Result<()> {
        self.writable()?;
        let (dir, name) = self.parent_of(path)?;
        nix::sys::stat::mkdirat(&dir, name.as_c_str(), safe_mode(mode, true))?;
        Ok(())
    }

    pub(crate) fn rmdir(&self, path: &str) -> io::Result<()> {
        self.writable()?;
        let (dir, name) = self.parent_of(path)?;
        nix::unistd::unlinkat(&dir, name.as_c_str(), nix::unistd::UnlinkatFlags::RemoveDir)?;
        Ok(())
    }

    /// `replace`: POSIX rename (posix-rename@openssh.com); otherwise SFTP's rename, which
    /// refuses to overwrite.
    pub(crate) fn rename(&self, from: &str, to: &str, replace: bool) -> io::Result<()> {
        self.writable()?;
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        if replace {
            return renameat2(&from_dir, &from_name, &to_dir, &to_name, 0);
        }
        match renameat2(
            &from_dir,
            &from_name,
            &to_dir,
            &to_name,
            libc::RENAME_NOREPLACE,
        ) {
            // A filesystem without RENAME_NOREPLACE: check, then rename.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                match nix::sys::stat::fstatat(
                    &to_dir,
                    to_name.as_c_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
                    Err(Errno::ENOENT) => renameat2(&from_dir, &from_name, &to_dir, &to_name, 0),
                    Err(e) => Err(e.into()),
                }
            }
            other => other,
        }
    }

    /// A hard link `to` → the file at `from` (a symlink at `from` is linked, not followed).
    pub(crate) fn hardlink(&self, from: &str, to: &str) -> io::Result<()> {
        self.writable()?;
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        nix::unistd::linkat(
            &from_dir,
            from_name.as_c_str(),
            &to_dir,
            to_name.as_c_str(),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Creates a symlink at `link` whose text is `target`, stored as given: whatever it says,
    /// following it through this server stays confined.
    pub(crate) fn symlink(&self, target: &str, link: &str) -> io::Result<()> {
        self.writable()?;
        let (dir, name) = self.parent_of(link)?;
        nix::unistd::symlinkat(target, &dir, name.as_c_str())?;
        Ok(())
    }

    pub(crate) fn statvfs(&self, path: &str) -> io::Result<Statvfs> {
        let fd = self.resolve(path, OFlag::O_PATH, 0)?;
        Ok(nix::sys::statvfs::fstatvfs(&fd)?)
    }
}

/// A mode the remote asks for, without set-user-ID and set-group-ID (a program written through
/// the mount must not run with this user's rights, or a group's, here), nor the sticky bit on
/// files, where it means nothing; a directory keeps its sticky bit.
fn safe_mode(mode: u32, is_dir: bool) -> Mode {
    let mut refused = libc::S_ISUID | libc::S_ISGID;
    if !is_dir {
        refused |= libc::S_ISVTX;
    }
    Mode::from_bits_truncate(mode & 0o7777 & !refused)
}

/// The path relative to the export root: "/" and "" are the root itself.
fn relative(path: &str) -> &str {
    match path.trim_start_matches('/') {
        "" => ".",
        rel => rel,
    }
}

/// Splits off the last component, which must be a real name (not the root, `.` or `..`).
fn split_last(path: &str) -> io::Result<(&str, CString)> {
    let trimmed = path.trim_end_matches('/');
    let trimmed = trimmed.trim_start_matches('/');
    let (parent, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (".", trimmed),
    };
    if name.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    if name == "." || name == ".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((if parent.is_empty() { "." } else { parent }, name))
}

/// renameat2(2) through the raw system call (the libc wrapper is glibc-only).
fn renameat2(
    from_dir: &OwnedFd,
    from: &CString,
    to_dir: &OwnedFd,
    to: &CString,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid descriptors and NUL-terminated names that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir_all(export.join("sub")).unwrap();
        std::fs::write(export.join("inside.txt"), "inside").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
        symlink(dir.path().join("secret.txt"), export.join("abs-out")).unwrap();
        symlink("../secret.txt", export.join("rel-out")).unwrap();
        symlink("inside.txt", export.join("ok-link")).unwrap();
        symlink("../inside.txt", export.join("sub/up-link")).unwrap();
        (dir, export)
    }

    fn errno(e: io::Error) -> i32 {
        e.raw_os_error().unwrap_or(0)
    }

    #[test]
    fn paths_resolve_inside_the_export_only() {
        let (_dir, root) = setup();
        let export = Export::open(&root, false).unwrap();
        let read = |p: &str| {
            export
                .open_file(p, OFlag::O_RDONLY, 0)
                .map(|f| std::io::read_to_string(f).unwrap())
        };
        assert_eq!(read("/inside.txt").unwrap(), "inside");
        assert_eq!(read("inside.txt").unwrap(), "inside");
        assert_eq!(read("/ok-link").unwrap(), "inside");
        assert_eq!(read("/sub/up-link").unwrap(), "inside");
        assert_eq!(read("/sub/../inside.txt").unwrap(), "inside");
        for escape in [
            "../secret.txt",
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/abs-out",
            "/rel-out",
        ] {
            assert_eq!(errno(read(escape).unwrap_err()), libc::EXDEV, "{escape}");
        }
        // An absolute path is the export's, not the machine's.
        let secret = root.parent().unwrap().join("secret.txt");
        assert_eq!(
            errno(read(secret.to_str().unwrap()).unwrap_err()),
            libc::ENOENT
        );
        assert_eq!(errno(read("/proc/self/environ").unwrap_err()), libc::ENOENT);
        // The links themselves are visible (lstat, readlink), not what they point at.
        assert!(export.stat("/abs-out", false).is_ok());
        assert_eq!(
            errno(export.stat("/abs-out", true).unwrap_err()),
            libc::EXDEV
        );
        assert_eq!(export.readlink("/rel-out").unwrap(), "../secret.txt");
        assert_eq!(
            errno(
                export
                    .set_path(
                        "/abs-out",
                        &Changes {
                            mode: Some(0o600),
                            ..Default::default()
                        }
                    )
                    .unwrap_err()
            ),
            libc::EXDEV
        );
        assert_eq!(errno(export.statvfs("/..").unwrap_err()), libc::EXDEV);
    }

    #[test]
    fn changes_stay_inside_and_never_follow_the_last_link() {
        let (dir, root) = setup();
        let export = Export::open(&root, false).unwrap();
        // Removing or renaming a link acts on the link.
        export.remove("/abs-out").unwrap();
        assert!(dir.path().join("secret.txt").exists());
        export.rename("/rel-out", "/renamed", false).unwrap();
        assert!(root.join("renamed").is_symlink());
        assert_eq!(
            errno(export.rename("/renamed", "/inside.txt", false).unwrap_err()),
            libc::EEXIST
        );
        export.rename("/renamed", "/ok-link", true).unwrap();
        assert_eq!(
            errno(export.mkdir("/../escaped", 0o755).unwrap_err()),
            libc::EXDEV
        );
        assert_eq!(
            errno(export.rename("/inside.txt", "/../moved", true).unwrap_err()),
            libc::EXDEV
        );
        assert!(!dir.path().join("escaped").exists() && !dir.path().join("moved").exists());
        // Creating through a link pointing out is refused.
        symlink(dir.path().join("new.txt"), root.join("dangling")).unwrap();
        let create = OFlag::O_WRONLY | OFlag::O_CREAT;
        assert_eq!(
            errno(export.open_file("/dangling", create, 0o644).unwrap_err()),
            libc::EXDEV
        );
        assert!(!dir.path().join("new.txt").exists());
        for bad in ["/", "/.", "/sub/.."] {
            assert!(export.rmdir(bad).is_err(), "{bad}");
        }
        export.mkdir("/made", 0o755).unwrap();
        export.symlink("/etc/passwd", "/made/l").unwrap();
        assert_eq!(export.readlink("/made/l").unwrap(), "/etc/passwd");
        assert_eq!(
            errno(export.stat("/made/l", true).unwrap_err()),
            libc::EXDEV
        );
        export.hardlink("/inside.txt", "/made/h").unwrap();
        export
            .set_path(
                "/made/h",
                &Changes {
                    size: Some(2),
                    mode: Some(0o600),
                    times: Some((1, 2)),
                    ..Default::default()
                },
            )
            .unwrap();
        let st = export.stat("/inside.txt", false).unwrap();
        assert_eq!((st.st_size, st.st_mode & 0o777, st.st_mtime), (2, 0o600, 2));
    }

    #[test]
    fn no_mode_the_remote_sets_keeps_setuid_or_setgid() {
        let (_dir, root) = setup();
        let export = Export::open(&root, false).unwrap();
        let mode = |p: &str| export.stat(p, false).unwrap().st_mode & 0o7777;
        let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        export.open_file("/created", create, 0o7755).unwrap();
        assert_eq!(mode("/created") & 0o7000, 0);
        let chmod = Changes {
            mode: Some(0o7777),
            ..Default::default()
        };
        export.set_path("/inside.txt", &chmod).unwrap();
        assert_eq!(mode("/inside.txt"), 0o777);
        let file = export.open_file("/created", OFlag::O_RDONLY, 0).unwrap();
        export.set_fd(&file, &chmod).unwrap();
        assert_eq!(mode("/created"), 0o777);
        // A directory keeps its sticky bit (as /tmp does), never set-ID bits.
        export.mkdir("/made", 0o7777).unwrap();
        assert_eq!(mode("/made") & 0o7000, 0o1000);
        export.set_path("/sub", &chmod).unwrap();
        assert_eq!(mode("/sub"), 0o1777);
        let dir = export.open_dir("/sub").unwrap();
        export.set_fd(&dir, &chmod).unwrap();
        assert_eq!(mode("/sub"), 0o1777);
    }

    #[test]
    fn a_read_only_export_refuses_every_change() {
        let (_dir, root) = setup();
        let export = Export::open(&root, true).unwrap();
        let erofs = |r: io::Result<()>| errno(r.unwrap_err()) == libc::EROFS;
        assert!(export.open_file("/inside.txt", OFlag::O_RDONLY, 0).is_ok());
        for flags in [
            OFlag::O_WRONLY,
            OFlag::O_RDWR,
            OFlag::O_RDONLY | OFlag::O_CREAT,
            OFlag::O_RDONLY | OFlag::O_TRUNC,
        ] {
            assert!(
                erofs(export.open_file("/inside.txt", flags, 0o644).map(drop)),
                "{flags:?}"
            );
        }
        assert!(erofs(export.remove("/inside.txt")));
        assert!(erofs(export.mkdir("/d", 0o755)));
        assert!(erofs(export.rmdir("/sub")));
        assert!(erofs(export.rename("/inside.txt", "/x", true)));
        assert!(erofs(export.symlink("x", "/l")));
        assert!(erofs(export.hardlink("/inside.txt", "/h")));
        assert!(erofs(export.set_path(
            "/inside.txt",
            &Changes {
                mode: Some(0o777),
                ..Default::default()
            }
        )));
        let file = export.open_file("/inside.txt", OFlag::O_RDONLY, 0).unwrap();
        assert!(erofs(export.set_fd(
            &file,
            &Changes {
                size: Some(0),
                ..Default::default()
            }
        )));
        assert_eq!(
            std::fs::read_to_string(root.join("inside.txt")).unwrap(),
            "inside"
        );
    }
}
