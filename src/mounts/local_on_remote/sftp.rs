//! The SFTP server that runs inside the launcher, one per mount, speaking to the remote sshfs
//! over one ssh channel. Every operation goes through [`Export`], which confines it. File system
//! calls are made inline: each server runs on a thread of its own, off the launcher's runtime
//! (a hop to tokio's blocking pool per request halved the throughput).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use nix::dir::{Dir, OwningIter};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::FileStat;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as Entry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};

use tokio::io::{AsyncRead, AsyncWrite};

use super::export::{Changes, Export};
use super::handle_budget::{HandleBudget, HandlePermit};
use super::names;

/// Largest read answered at once (sshfs asks for 32 KiB by default; OpenSSH caps at 256 KiB).
const MAX_READ: u32 = 256 * 1024;
/// Entries per READDIR answer.
const DIR_BATCH: usize = 128;
/// Requests checked for their names and not yet read by the server.
const CHECKED_BUFFER: usize = 512 * 1024;
enum Open {
    File(OpenFile),
    Dir(Arc<Mutex<Listing>>),
}

struct OpenFile {
    file: Arc<File>,
    /// Written to or truncated through this handle: its close flushes to the disk.
    written: bool,
    _permit: HandlePermit,
}

impl OpenFile {
    /// Flushes what was written and closes the file, so that a failure the kernel only
    /// reports then (a full disk or an I/O error at write-back, a network file system's close)
    /// reaches the remote instead of being lost with the descriptor.
    fn close(self) -> io::Result<()> {
        // Pipes and devices have nothing to flush (and fdatasync refuses them).
        let flushed = if self.written && self.file.metadata()?.is_file() {
            self.file.sync_data()
        } else {
            Ok(())
        };
        let closed = match Arc::try_unwrap(self.file) {
            Ok(file) => nix::unistd::close(file).map_err(io::Error::from),
            // Requests are answered one at a time, so nothing else holds it; if something did,
            // the last holder closes it.
            Err(_) => Ok(()),
        };
        flushed.and(closed)
    }
}

struct Listing {
    entries: OwningIter,
    /// The directory's own attributes, reported for `.` and `..` (the parent of the export
    /// root is not ours to describe).
    own: FileStat,
    _permit: HandlePermit,
}

/// Serves `server` on `stream` (the remote sshfs's SFTP) until the stream ends.
pub(crate) async fn run<S>(stream: S, server: SftpServer)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (from_remote, to_remote) = tokio::io::split(stream);
    let (checked, to_checked) = tokio::io::simplex(CHECKED_BUFFER);
    tokio::spawn(names::check(from_remote, to_checked));
    russh_sftp::server::run(tokio::io::join(checked, to_remote), server).await;
}

/// The SFTP side of one mount.
pub(crate) struct SftpServer {
    export: Arc<Export>,
    handles: HashMap<String, Open>,
    budget: Arc<HandleBudget>,
    next: u64,
    /// For logs: "mount /remote/path".
    what: String,
    /// Whether a listing skipped a name that is not UTF-8 yet (said once per mount).
    skipped_a_name: bool,
}

impl SftpServer {
    pub(crate) fn new(export: Arc<Export>, budget: Arc<HandleBudget>, what: String) -> Self {
        SftpServer {
            export,
            handles: HashMap::new(),
            budget,
            next: 0,
            what,
            skipped_a_name: false,
        }
    }

    fn insert(&mut self, open: Open) -> String {
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        handle
    }

    fn file(&self, handle: &str) -> Result<Arc<File>, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f.file.clone()),
            _ => Err(bad_handle()),
        }
    }

    fn mark_written(&mut self, handle: &str) {
        if let Some(Open::File(f)) = self.handles.get_mut(handle) {
            f.written = true;
        }
    }

    /// Runs a file system call. Inline: the server has a thread of its own (see `mount`), so a
    /// slow disk only ever delays this mount.
    fn fs<T>(&self, work: impl FnOnce(&Export) -> io::Result<T>) -> Result<T, StatusReply> {
        work(&self.export).map_err(reply)
    }
}

fn too_many_open_files() -> StatusReply {
    StatusCode::Failure.with_message("too many open files through the mounts")
}

fn bad_handle() -> StatusReply {
    StatusCode::Failure.with_message("invalid handle")
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// An errno as an SFTP status, as OpenSSH's sftp-server maps them; an escape attempt and a
/// change to a read-only export are "permission denied".
fn reply(e: io::Error) -> StatusReply {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::EBADF | libc::ELOOP) => StatusCode::NoSuchFile,
        Some(libc::EPERM | libc::EACCES | libc::EFAULT) => StatusCode::PermissionDenied,
        Some(libc::EXDEV) => {
            return StatusCode::PermissionDenied.with_message("outside the exported directory")
        }
        Some(libc::EROFS) => {
            return StatusCode::PermissionDenied.with_message("the export is read-only")
        }
        Some(libc::ENAMETOOLONG | libc::EINVAL) => StatusCode::BadMessage,
        Some(libc::ENOSYS | libc::EOPNOTSUPP) => StatusCode::OpUnsupported,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

pub(crate) fn attrs(st: &FileStat) -> FileAttributes {
    FileAttributes {
        size: Some(st.st_size as u64),
        uid: Some(st.st_uid),
        user: None,
        gid: Some(st.st_gid),
        group: None,
        permissions: Some(st.st_mode),
        atime: Some(st.st_atime as u32),
        mtime: Some(st.st_mtime as u32),
    }
}

fn changes(a: &FileAttributes) -> Changes {
    Changes {
        size: a.size,
        mode: a.permissions,
        uid: a.uid,
        gid: a.gid,
        times: match (a.atime, a.mtime) {
            (Some(at), Some(mt)) => Some((at as i64, mt as i64)),
            _ => None,
        },
    }
}

fn open_flags(p: OpenFlags) -> OFlag {
    let mut flags = match (p.contains(OpenFlags::READ), p.contains(OpenFlags::WRITE)) {
        (_, false) => OFlag::O_RDONLY,
        (false, true) => OFlag::O_WRONLY,
        (true, true) => OFlag::O_RDWR,
    };
    if p.contains(OpenFlags::APPEND) {
        flags |= OFlag::O_APPEND;
    }
    if p.contains(OpenFlags::CREATE) {
        flags |= OFlag::O_CREAT;
        if p.contains(OpenFlags::EXCLUDE) {
            flags |= OFlag::O_EXCL;
        }
    }
    if p.contains(OpenFlags::TRUNCATE) {
        flags |= OFlag::O_TRUNC;
    }
    flags
}

/// The next `string` of an extended request's payload.
fn take_string(data: &mut &[u8]) -> Result<String, StatusReply> {
    let bad = || StatusReply::new(StatusCode::BadMessage);
    if data.len() < 4 {
        return Err(bad());
    }
    let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
    let rest = &data[4..];
    if rest.len() < len {
        return Err(bad());
    }
    let text = String::from_utf8(rest[..len].to_vec()).map_err(|_| bad())?;
    *data = &rest[len..];
    Ok(text)
}

/// The next entries of a listing, and the first name skipped for not being UTF-8, if any.
fn next_batch(listing: &mut Listing) -> io::Result<(Vec<Entry>, Option<CString>)> {
    let mut files = Vec::new();
    let mut skipped = None;
    while files.len() < DIR_BATCH {
        let Some(entry) = listing.entries.next() else {
            break;
        };
        let entry = entry?;
        let name: &CStr = entry.file_name();
        // A name that is not UTF-8 could not be asked for later (see `names`).
        let Ok(text) = name.to_str() else {
            skipped.get_or_insert_with(|| name.to_owned());
            continue;
        };
        let st = if text == "." || text == ".." {
            listing.own
        } else {
            // SAFETY: the listing owns the directory descriptor for the whole call.
            let dir = unsafe { BorrowedFd::borrow_raw(listing.entries.as_raw_fd()) };
            match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since the listing was read.
                Err(_) => continue,
            }
        };
        files.push(Entry::new(text, attrs(&st)));
    }
    Ok((files, skipped))
}

impl Handler for SftpServer {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut version = Version::new();
        for (name, revision) in [
            ("posix-rename@openssh.com", "1"),
            ("statvfs@openssh.com", "2"),
            ("hardlink@openssh.com", "1"),
            ("fsync@openssh.com", "1"),
        ] {
            version.extensions.insert(name.into(), revision.into());
        }
        Ok(version)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let flags = open_flags(pflags);
        let mode = attrs.permissions.unwrap_or(0o666);
        let permit = self.budget.take().ok_or_else(too_many_open_files)?;
        let file = self.fs(move |e| e.open_file(&filename, flags, mode))?;
        let handle = self.insert(Open::File(OpenFile {
            file: Arc::new(file),
            written: false,
            _permit: permit,
        }));
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::File(file)) => {
                self.fs(move |_| file.close())?;
                Ok(ok(id))
            }
            Some(Open::Dir(_)) => Ok(ok(id)),
            None => Err(bad_handle()),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let len = len.min(MAX_READ) as usize;
        let data = self.fs(move |_| {
            let mut buf = vec![0; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if filled > 0 => {
                        tracing::debug!("mount: short read: {e}");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })?;
        if data.is_empty() && len > 0 {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        self.fs(move |e| {
            if e.read_only() {
                return Err(io::Error::from_raw_os_error(libc::EROFS));
            }
            file.write_all_at(&data, offset)
        })?;
        self.mark_written(&handle);
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let st = self.fs(move |e| e.stat(&path, false))?;
        Ok(Attrs {
            id,
            attrs: attrs(&st),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let st = self.fs(move |e| e.stat(&path, true))?;
        Ok(Attrs {
            id,
            attrs: attrs(&st),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let st = match self.handles.get(&handle) {
            Some(Open::File(f)) => {
                let f = f.file.clone();
                self.fs(move |_| Ok(nix::sys::stat::fstat(&*f)?))?
            }
            Some(Open::Dir(d)) => d.lock().unwrap().own,
            None => return Err(bad_handle()),
        };
        Ok(Attrs {
            id,
            attrs: attrs(&st),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let changes = changes(&attrs);
        self.fs(move |e| e.set_path(&path, &changes))?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let changes = changes(&attrs);
        match self.handles.get(&handle) {
            Some(Open::File(f)) => {
                let f = f.file.clone();
                self.fs(move |e| e.set_fd(&*f, &changes))?;
                if changes.size.is_some() {
                    self.mark_written(&handle);
                }
            }
            Some(Open::Dir(d)) => {
                let d = d.clone();
                self.fs(move |e| {
                    let listing = d.lock().unwrap();
                    // SAFETY: the listing owns the descriptor while locked.
                    let fd = unsafe { BorrowedFd::borrow_raw(listing.entries.as_raw_fd()) };
                    e.set_fd(fd, &changes)
                })?;
            }
            None => return Err(bad_handle()),
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let permit = self.budget.take().ok_or_else(too_many_open_files)?;
        let listing = self.fs(move |e| {
            let fd = e.open_dir(&path)?;
            let own = nix::sys::stat::fstat(&fd)?;
            let dir = Dir::from_fd(fd)?;
            Ok(Listing {
                entries: dir.into_iter(),
                own,
                _permit: permit,
            })
        })?;
        let handle = self.insert(Open::Dir(Arc::new(Mutex::new(listing))));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir(listing)) = self.handles.get(&handle) else {
            return Err(bad_handle());
        };
        let listing = listing.clone();
        let (files, skipped) = self.fs(move |_| next_batch(&mut listing.lock().unwrap()))?;
        if let Some(name) = skipped.filter(|_| !self.skipped_a_name) {
            self.skipped_a_name = true;
            tracing::warn!(
                "{}: file names that are not UTF-8 are not shown on the remote (such as {name:?}); rename them to use them there (said once per mount)",
                self.what
            );
        }
        if files.is_empty() {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.fs(move |e| e.remove(&filename))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let mode = attrs.permissions.unwrap_or(0o777);
        self.fs(move |e| e.mkdir(&path, mode))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.fs(move |e| e.rmdir(&path))?;
        Ok(ok(id))
    }

    /// Lexical: the export root is `/`, and `..` never climbs above it.
    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let mut parts: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => parts.push(name),
            }
        }
        let canonical = format!("/{}", parts.join("/"));
        Ok(Name {
            id,
            files: vec![Entry::dummy(canonical)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.fs(move |e| e.rename(&oldpath, &newpath, false))?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = self.fs(move |e| e.readlink(&path))?;
        let target = target
            .into_string()
            .map_err(|_| StatusCode::Failure.with_message("link text is not UTF-8"))?;
        Ok(Name {
            id,
            files: vec![Entry::dummy(target)],
        })
    }

    /// OpenSSH's sftp-server (and so sshfs) sends the link's *target* first and the new link's
    /// path second, the reverse of the draft; russh-sftp names the fields after the draft.
    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        let (target, link) = (linkpath, targetpath);
        self.fs(move |e| e.symlink(&target, &link))?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        let mut rest = data.as_slice();
        match request.as_str() {
            "posix-rename@openssh.com" => {
                let from = take_string(&mut rest)?;
                let to = take_string(&mut rest)?;
                self.fs(move |e| e.rename(&from, &to, true))?;
                Ok(Packet::Status(ok(id)))
            }
            "hardlink@openssh.com" => {
                let from = take_string(&mut rest)?;
                let to = take_string(&mut rest)?;
                self.fs(move |e| e.hardlink(&from, &to))?;
                Ok(Packet::Status(ok(id)))
            }
            names::NAME_NOT_UTF8 => Err(StatusCode::Failure
                .with_message("the file name is not UTF-8, which this server does not serve")),
            "fsync@openssh.com" => {
                let handle = take_string(&mut rest)?;
                let file = self.file(&handle)?;
                self.fs(move |_| file.sync_all())?;
                Ok(Packet::Status(ok(id)))
            }
            "statvfs@openssh.com" => {
                let path = take_string(&mut rest)?;
                let read_only = self.export.read_only();
                let st = self.fs(move |e| e.statvfs(&path))?;
                let mut flags = 0u64;
                if read_only || st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
                    flags |= 1; // SSH2_FXE_STATVFS_ST_RDONLY
                }
                if st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
                    flags |= 2; // SSH2_FXE_STATVFS_ST_NOSUID
                }
                // The libc field types vary between platforms.
                #[allow(clippy::unnecessary_cast)]
                let reply = russh_sftp::extensions::Statvfs {
                    block_size: st.block_size() as u64,
                    fragment_size: st.fragment_size() as u64,
                    blocks: st.blocks() as u64,
                    blocks_free: st.blocks_free() as u64,
                    blocks_avail: st.blocks_available() as u64,
                    inodes: st.files() as u64,
                    inodes_free: st.files_free() as u64,
                    inodes_avail: st.files_available() as u64,
                    fs_id: st.filesystem_id() as u64,
                    flags,
                    name_max: st.name_max() as u64,
                };
                let data = russh_sftp::ser::to_bytes(&reply)
                    .map_err(|_| StatusReply::new(StatusCode::Failure))?
                    .to_vec();
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            _ => Err(StatusReply::new(StatusCode::OpUnsupported)),
        }
    }
}

#[cfg(test)]
mod tests;
