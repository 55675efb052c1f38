//! The SFTP server against a real client over an in-memory stream, on real directories.

use super::*;
use russh_sftp::client::{error::Error as ClientError, RawSftpSession};
use std::os::unix::fs::symlink;

/// A client talking to our server over an in-memory stream, as sshfs does over the channel.
async fn session(root: &std::path::Path, read_only: bool) -> RawSftpSession {
    session_within(root, read_only, HandleBudget::new(64)).await
}

async fn session_within(
    root: &std::path::Path,
    read_only: bool,
    budget: Arc<HandleBudget>,
) -> RawSftpSession {
    let (client, server) = tokio::io::duplex(1 << 20);
    let export = Arc::new(Export::open(root, read_only).unwrap());
    run(
        server,
        SftpServer::new(export, budget, "mount /test".into()),
    )
    .await;
    let session = RawSftpSession::new(client);
    let version = session.init().await.unwrap();
    assert!(version.extensions.contains_key("posix-rename@openssh.com"));
    session
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> StatusCode {
    match r {
        Err(ClientError::Status(s)) => s.status_code,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Extended requests answer with a packet, a status included.
fn ext_code(r: Result<Packet, ClientError>) -> StatusCode {
    match r {
        Ok(Packet::Status(s)) => s.status_code,
        other => code(other),
    }
}

fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("export");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "hello").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    symlink(dir.path().join("secret.txt"), root.join("out")).unwrap();
    symlink("../secret.txt", root.join("rel-out")).unwrap();
    (dir, root)
}

async fn read_all(s: &RawSftpSession, path: &str) -> Result<Vec<u8>, ClientError> {
    let handle = s
        .open(path, OpenFlags::READ, FileAttributes::empty())
        .await?
        .handle;
    let data = s.read(&handle, 0, 1 << 16).await?.data;
    s.close(&handle).await?;
    Ok(data)
}

async fn names(s: &RawSftpSession, path: &str) -> Vec<String> {
    let handle = s.opendir(path).await.unwrap().handle;
    let mut all = Vec::new();
    loop {
        match s.readdir(&handle).await {
            Ok(name) => all.extend(name.files.into_iter().map(|f| f.filename)),
            Err(e) => {
                assert_eq!(code::<()>(Err(e)), StatusCode::Eof);
                break;
            }
        }
    }
    s.close(&handle).await.unwrap();
    all.sort();
    all
}

#[tokio::test]
async fn serves_the_export_and_nothing_else() {
    let (dir, root) = tree();
    let s = session(&root, false).await;
    assert_eq!(read_all(&s, "/a.txt").await.unwrap(), b"hello");
    // `..` of the root is refused, absolute paths are the export's.
    let listing = [".", "..", "a.txt", "out", "rel-out", "sub"];
    assert_eq!(names(&s, "/").await, listing);
    assert_eq!(names(&s, "/sub/..").await, listing);
    for up in ["/..", "..", "/sub/../..", "/..//../"] {
        assert_eq!(
            code(s.opendir(up).await),
            StatusCode::PermissionDenied,
            "{up}"
        );
    }
    assert_eq!(s.realpath("/../..").await.unwrap().files[0].filename, "/");
    for path in [
        "/../secret.txt",
        "/out",
        "/rel-out",
        "/sub/../../secret.txt",
    ] {
        let c = code(read_all(&s, path).await);
        assert!(
            matches!(c, StatusCode::PermissionDenied | StatusCode::NoSuchFile),
            "{path}: {c:?}"
        );
    }
    let secret = dir.path().join("secret.txt");
    assert_eq!(
        code(read_all(&s, secret.to_str().unwrap()).await),
        StatusCode::NoSuchFile
    );
    assert_eq!(code(s.stat("/out").await), StatusCode::PermissionDenied);
    assert!(s.lstat("/out").await.unwrap().attrs.is_symlink());
    assert_eq!(
        s.readlink("/rel-out").await.unwrap().files[0].filename,
        "../secret.txt"
    );

    // Writes work, inside.
    let h = s
        .open(
            "/sub/new.txt",
            OpenFlags::CREATE | OpenFlags::WRITE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    s.write(&h, 0, b"written".to_vec()).await.unwrap();
    s.close(&h).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("sub/new.txt")).unwrap(),
        "written"
    );
    s.extended(
        "posix-rename@openssh.com",
        [b"\0\0\0\x0c/sub/new.txt".as_slice(), b"\0\0\0\x06/b.txt"].concat(),
    )
    .await
    .unwrap();
    assert!(root.join("b.txt").exists());
    // A symlink is created as given (OpenSSH order: target, then link path) and stays
    // unreadable when it points out.
    s.symlink("/etc/passwd", "/link").await.unwrap();
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap().to_str(),
        Some("/etc/passwd")
    );
    assert_eq!(
        code(read_all(&s, "/link").await),
        StatusCode::PermissionDenied
    );
    assert_eq!(
        code(
            s.open(
                "/../escaped",
                OpenFlags::CREATE | OpenFlags::WRITE,
                FileAttributes::empty()
            )
            .await
        ),
        StatusCode::PermissionDenied
    );
    assert!(!dir.path().join("escaped").exists());
    let vfs = s.statvfs("/").await.unwrap();
    assert!(vfs.blocks > 0 && vfs.flags & 1 == 0);
}

#[tokio::test]
async fn a_failed_flush_at_close_is_reported() {
    // procfs takes writes but has no disk to flush them to (fdatasync: EINVAL): the close
    // of a file written through the mount must say so. The value written is the current one.
    let s = session(std::path::Path::new("/proc/self"), false).await;
    let current = read_all(&s, "/oom_score_adj").await.unwrap();
    let h = s
        .open("/oom_score_adj", OpenFlags::WRITE, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    s.write(&h, 0, current).await.unwrap();
    assert_ne!(code(s.close(&h).await), StatusCode::Ok);
    // Only written files are flushed: closing one that was only read stays quiet.
    read_all(&s, "/oom_score_adj").await.unwrap();
}

/// Sends one raw packet (type, then `body`: the id and fields) and returns the answer's type
/// and the rest.
async fn raw_request(stream: &mut tokio::io::DuplexStream, kind: u8, body: &[u8]) -> (u8, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let packet = [&[kind][..], body].concat();
    stream.write_u32(packet.len() as u32).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let len = stream.read_u32().await.unwrap();
    let mut answer = vec![0; len as usize];
    stream.read_exact(&mut answer).await.unwrap();
    (answer[0], answer[1..].to_vec())
}

#[tokio::test]
async fn names_that_are_not_utf8_are_refused_never_merged() {
    use std::os::unix::ffi::OsStrExt;
    let (_dir, root) = tree();
    std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"b\xff")), "local").unwrap();
    let (mut client, server) = tokio::io::duplex(1 << 20);
    run(
        server,
        SftpServer::new(
            Arc::new(Export::open(&root, false).unwrap()),
            HandleBudget::new(64),
            "mount /test".into(),
        ),
    )
    .await;
    let (kind, _) = raw_request(&mut client, 1, &3u32.to_be_bytes()).await;
    assert_eq!(kind, 2, "VERSION");
    let string = |s: &[u8]| [&(s.len() as u32).to_be_bytes()[..], s].concat();
    let id = 1u32.to_be_bytes().to_vec();
    let create = (0x08u32 | 0x02).to_be_bytes().to_vec(); // CREAT | WRITE
    let no_attrs = 0u32.to_be_bytes().to_vec();
    for name in [&b"/a\xff"[..], b"/a\xfe"] {
        let open = [id.clone(), string(name), create.clone(), no_attrs.clone()].concat();
        let (kind, answer) = raw_request(&mut client, 3, &open).await;
        assert_eq!(kind, 101, "a STATUS, not a handle");
        // id, then the code: SSH_FX_FAILURE.
        assert_eq!(answer[4..8], 4u32.to_be_bytes());
    }
    let rename = [id, string(b"/a.txt"), string(b"/c\xff")].concat();
    assert_eq!(raw_request(&mut client, 18, &rename).await.0, 101);
    let local = |name: &[u8]| root.join(std::ffi::OsStr::from_bytes(name));
    for name in [&b"a\xff"[..], b"a\xfe", "a\u{FFFD}".as_bytes(), b"c\xff"] {
        assert!(!local(name).exists(), "{:?}", local(name));
    }
    assert!(root.join("a.txt").exists());
    // Listings skip such names (they could not be asked for).
    let s = session(&root, false).await;
    assert_eq!(
        names(&s, "/").await,
        [".", "..", "a.txt", "out", "rel-out", "sub"]
    );
}

async fn open(s: &RawSftpSession) -> Result<Handle, ClientError> {
    s.open("/a.txt", OpenFlags::READ, FileAttributes::empty())
        .await
}

#[tokio::test]
async fn every_mount_shares_one_budget_of_open_handles() {
    let (_dir, root) = tree();
    let budget = HandleBudget::new(3);
    let first = session_within(&root, false, budget.clone()).await;
    let second = session_within(&root, true, budget).await;
    let a = open(&first).await.unwrap().handle;
    let _b = open(&second).await.unwrap().handle;
    let _dir = first.opendir("/sub").await.unwrap().handle;
    assert_eq!(code(open(&second).await), StatusCode::Failure);
    assert_eq!(code(second.opendir("/").await), StatusCode::Failure);
    // A handle closed on one mount can be opened on another.
    first.close(&a).await.unwrap();
    open(&second).await.unwrap();
}

#[tokio::test]
async fn read_only_is_enforced_by_the_server() {
    let (_dir, root) = tree();
    let s = session(&root, true).await;
    assert_eq!(read_all(&s, "/a.txt").await.unwrap(), b"hello");
    let denied = StatusCode::PermissionDenied;
    for flags in [
        OpenFlags::WRITE,
        OpenFlags::READ | OpenFlags::WRITE,
        OpenFlags::CREATE | OpenFlags::WRITE,
        OpenFlags::READ | OpenFlags::TRUNCATE,
        OpenFlags::APPEND | OpenFlags::WRITE,
    ] {
        assert_eq!(
            code(s.open("/a.txt", flags, FileAttributes::empty()).await),
            denied,
            "{flags:?}"
        );
    }
    let h = s
        .open("/a.txt", OpenFlags::READ, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    assert_eq!(code(s.write(&h, 0, b"x".to_vec()).await), denied);
    let chmod = FileAttributes {
        permissions: Some(0o777),
        ..Default::default()
    };
    assert_eq!(code(s.fsetstat(&h, chmod.clone()).await), denied);
    assert_eq!(code(s.setstat("/a.txt", chmod.clone()).await), denied);
    let truncate = FileAttributes {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(code(s.setstat("/a.txt", truncate).await), denied);
    assert_eq!(code(s.remove("/a.txt").await), denied);
    assert_eq!(code(s.mkdir("/d", FileAttributes::empty()).await), denied);
    assert_eq!(code(s.rmdir("/sub").await), denied);
    assert_eq!(code(s.rename("/a.txt", "/b.txt").await), denied);
    assert_eq!(code(s.symlink("a.txt", "/l").await), denied);
    assert_eq!(code(s.hardlink("/a.txt", "/h").await), denied);
    let posix_rename = [b"\0\0\0\x06/a.txt".as_slice(), b"\0\0\0\x06/c.txt"].concat();
    assert_eq!(
        ext_code(s.extended("posix-rename@openssh.com", posix_rename).await),
        denied
    );
    assert_eq!(s.statvfs("/").await.unwrap().flags & 1, 1);
    assert_eq!(
        std::fs::read_to_string(root.join("a.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        names(&s, "/").await,
        [".", "..", "a.txt", "out", "rel-out", "sub"]
    );
}
