//! A client of OpenSSH's ControlMaster multiplexing protocol (OpenSSH's `PROTOCOL.mux`, as
//! `mux.c` implements it): channels through the master with no `ssh` process of ours.
//!
//! Why not the `openssh-mux-client` crate: it speaks the same protocol (and more), but we need
//! one request (a session with passed descriptors), cancel-safe reads of the reply, and to tell
//! a server's refusal of a session (sshd's `MaxSessions`, which sends us to another connection)
//! from other failures; that is this file's few lines, tested against a real OpenSSH master.
//!
//! One control connection carries one channel. The descriptors the channel reads and writes are
//! handed to the master with `SCM_RIGHTS`, so bytes flow between them and the master with no
//! copy here. The master ends the channel when the control connection closes: dropping a
//! [`MuxChannel`], or the kernel closing the socket of a SIGKILLed launcher, ends its channel.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// The protocol version of OpenSSH's mux.c (`SSHMUX_VER`).
const VERSION: u32 = 4;

const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_NEW_SESSION: u32 = 0x1000_0002;
const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
const MUX_S_FAILURE: u32 = 0x8000_0003;
const MUX_S_EXIT_MESSAGE: u32 = 0x8000_0004;
const MUX_S_SESSION_OPENED: u32 = 0x8000_0006;
const MUX_S_TTY_ALLOC_FAIL: u32 = 0x8000_0008;

/// `escape char` value that disables the escape character.
const NO_ESCAPE_CHAR: u32 = 0xffff_ffff;
/// The master refuses larger packets (CHANNEL_MUX_MAX_PACKET); so do we.
const MAX_PACKET: usize = 256 * 1024;
/// The one request a control connection of ours makes.
const REQUEST_ID: u32 = 0;
/// The reason mux.c's `mux_session_confirm` gives when the server refused the session: the one
/// way the protocol tells a refusal (sshd's `MaxSessions`) from other failures.
const REFUSED_BY_PEER: &str = "refused by peer";

/// Why the master did not give us a channel, or the channel failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MuxError {
    /// Nothing answers at the control socket.
    #[error("cannot reach the ControlMaster at {}: {source}", socket.display())]
    Unreachable { socket: PathBuf, source: io::Error },
    /// Another user listens at the control socket: our key and descriptors are not for them.
    #[error("the ControlMaster socket {} belongs to uid {owner}, not to us; remove it or fix ControlPath", socket.display())]
    NotOurs { socket: PathBuf, owner: u32 },
    /// The server refused one more session on this connection (sshd's `MaxSessions`).
    #[error("the ControlMaster could not open the channel: {0}")]
    Refused(String),
    /// `MUX_S_FAILURE` for any other reason.
    #[error("the ControlMaster could not open the channel: {0}")]
    Failed(String),
    /// `MUX_S_PERMISSION_DENIED`: the master itself said no (a declined `ControlMaster ask`).
    #[error("the ControlMaster refused the channel: {0}")]
    Denied(String),
    /// The master said something this client does not expect.
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl MuxError {
    /// `MUX_S_FAILURE` and its reason.
    fn failure(reason: String) -> MuxError {
        if reason.contains(REFUSED_BY_PEER) {
            MuxError::Refused(reason)
        } else {
            MuxError::Failed(reason)
        }
    }
}

/// One session channel through the master. Dropping it closes the control connection, and the
/// master then closes the channel.
#[derive(Debug)]
pub(crate) struct MuxChannel {
    control: UnixStream,
    /// Bytes read from the control connection and not yet parsed (reads stay cancel-safe).
    pending: Vec<u8>,
    session_id: u32,
    /// The result of `exit_status`, once known.
    ended: Option<Option<u32>>,
}

impl MuxChannel {
    /// Runs `command` on the remote host (no tty, no forwarding) with the given stdio.
    pub(crate) async fn session(
        control_path: &Path,
        command: &str,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Self, MuxError> {
        let request = new_session(REQUEST_ID, command);
        Self::open(control_path, &request, &[&stdin, &stdout, &stderr]).await
    }

    /// Hello, the request, its descriptors, the answer. The descriptors are ours to close
    /// afterwards: the master holds its own copies.
    async fn open(control_path: &Path, request: &[u8], fds: &[&OwnedFd]) -> Result<Self, MuxError> {
        let control =
            UnixStream::connect(control_path)
                .await
                .map_err(|source| MuxError::Unreachable {
                    socket: control_path.to_owned(),
                    source,
                })?;
        // The session key and our descriptors go to whoever listens there: only to a master of
        // ours (a socket path in a shared directory could be anyone's).
        let owner = control.peer_cred()?.uid();
        if owner != nix::unistd::getuid().as_raw() {
            return Err(MuxError::NotOurs {
                socket: control_path.to_owned(),
                owner,
            });
        }
        let mut channel = MuxChannel {
            control,
            pending: Vec::new(),
            session_id: 0,
            ended: None,
        };
        channel.control.write_all(&hello()).await?;
        match channel.read_reply().await? {
            Some(Reply::Hello { version: VERSION }) => {}
            Some(Reply::Hello { version }) => {
                return Err(MuxError::Protocol(format!(
                    "the ControlMaster speaks mux protocol version {version}, not {VERSION}"
                )))
            }
            Some(other) => return Err(unexpected(&other)),
            None => return Err(closed()),
        }
        channel.control.write_all(request).await?;
        for fd in fds {
            channel.send_fd(fd).await?;
        }
        loop {
            match channel.read_reply().await? {
                Some(Reply::SessionOpened { session_id, .. }) => {
                    channel.session_id = session_id;
                    return Ok(channel);
                }
                Some(Reply::Failure { reason, .. }) => return Err(MuxError::failure(reason)),
                Some(Reply::PermissionDenied { reason, .. }) => {
                    return Err(MuxError::Denied(reason))
                }
                Some(Reply::TtyAllocFail { .. }) => continue,
                Some(other) => return Err(unexpected(&other)),
                None => return Err(closed()),
            }
        }
    }

    /// Passes one descriptor as OpenSSH's `mm_send_fd` does: one byte of data carrying one
    /// `SCM_RIGHTS` message (the master receives them one at a time).
    async fn send_fd(&self, fd: &OwnedFd) -> io::Result<()> {
        let raw = [fd.as_raw_fd()];
        let socket = self.control.as_raw_fd();
        self.control
            .async_io(Interest::WRITABLE, || {
                let data = [0u8];
                let iov = [io::IoSlice::new(&data)];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                match sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
                    Ok(1) => Ok(()),
                    Ok(_) => Err(io::Error::other("short write passing a descriptor")),
                    Err(e) => Err(io::Error::from(e)),
                }
            })
            .await
    }

    /// The remote command's exit status, once the channel ended; `None` when the master closed
    /// the channel without one (the connection lost, the command killed by a signal). Cancel-safe.
    pub(crate) async fn exit_status(&mut self) -> Result<Option<u32>, MuxError> {
        if let Some(ended) = self.ended {
            return Ok(ended);
        }
        loop {
            match self.read_reply().await {
                Ok(Some(Reply::ExitMessage { session_id, status }))
                    if session_id == self.session_id =>
                {
                    self.ended = Some(Some(status));
                    return Ok(Some(status));
                }
                Ok(Some(Reply::TtyAllocFail { .. })) => continue,
                Ok(Some(other)) => return Err(unexpected(&other)),
                Ok(None) => {
                    self.ended = Some(None);
                    return Ok(None);
                }
                // A reset connection is a master gone away, too.
                Err(MuxError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.ended = Some(None);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole packet from the master; `None` at a clean end of the connection.
    async fn read_reply(&mut self) -> Result<Option<Reply>, MuxError> {
        loop {
            if let Some((reply, used)) = parse_packet(&self.pending)? {
                self.pending.drain(..used);
                return Ok(Some(reply));
            }
            if self.control.read_buf(&mut self.pending).await? == 0 {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Err(MuxError::Protocol(
                    "the ControlMaster closed the connection in the middle of a message".into(),
                ));
            }
        }
    }
}

fn closed() -> MuxError {
    MuxError::Protocol("the ControlMaster closed the connection before answering".into())
}

fn unexpected(reply: &Reply) -> MuxError {
    MuxError::Protocol(format!(
        "unexpected answer from the ControlMaster: {reply:?}"
    ))
}

/// What the master says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Hello { version: u32 },
    SessionOpened { request_id: u32, session_id: u32 },
    Failure { request_id: u32, reason: String },
    PermissionDenied { request_id: u32, reason: String },
    ExitMessage { session_id: u32, status: u32 },
    TtyAllocFail { session_id: u32 },
    Other { kind: u32 },
}

/// A packet: `uint32 length` then the body (SSH wire format, big endian).
fn packet(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn put_u32(buf: &mut Vec<u8>, value: u32) {
    buf.extend_from_slice(&value.to_be_bytes());
}

/// An SSH `string`: `uint32 length` then the bytes.
fn put_string(buf: &mut Vec<u8>, value: &[u8]) {
    put_u32(buf, value.len() as u32);
    buf.extend_from_slice(value);
}

/// `MUX_MSG_HELLO`, our version, no extensions (`mux_client_hello_exchange`).
fn hello() -> Vec<u8> {
    let mut body = Vec::new();
    put_u32(&mut body, MUX_MSG_HELLO);
    put_u32(&mut body, VERSION);
    packet(body)
}

/// `MUX_C_NEW_SESSION` as `mux_client_request_session` sends it: request id, reserved string,
/// want tty, want X11, want agent, subsystem (all uint32, all 0 here), escape char (none),
/// terminal type (empty), the command, and no environment strings.
fn new_session(request_id: u32, command: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_u32(&mut body, MUX_C_NEW_SESSION);
    put_u32(&mut body, request_id);
    put_string(&mut body, b"");
    for flag in [0, 0, 0, 0] {
        put_u32(&mut body, flag);
    }
    put_u32(&mut body, NO_ESCAPE_CHAR);
    put_string(&mut body, b"");
    put_string(&mut body, command.as_bytes());
    packet(body)
}

/// Reads SSH wire types from a packet body.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, MuxError> {
        if self.0.len() < 4 {
            return Err(malformed());
        }
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes(head.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<String, MuxError> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return Err(malformed());
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(String::from_utf8_lossy(head).into_owned())
    }
}

fn malformed() -> MuxError {
    MuxError::Protocol("malformed message from the ControlMaster".into())
}

/// One whole packet from the front of `buf` and the bytes it took, if it is all there.
fn parse_packet(buf: &[u8]) -> Result<Option<(Reply, usize)>, MuxError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PACKET {
        return Err(malformed());
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((parse_reply(&buf[4..4 + len])?, 4 + len)))
}

/// The layouts of mux.c's replies (`reply_error`, `mux_session_confirm`, `mux_exit_message`,
/// `mux_tty_alloc_failed`).
fn parse_reply(body: &[u8]) -> Result<Reply, MuxError> {
    let mut r = Reader(body);
    let kind = r.u32()?;
    Ok(match kind {
        // Extensions may follow; none is defined, all are ignored.
        MUX_MSG_HELLO => Reply::Hello { version: r.u32()? },
        MUX_S_SESSION_OPENED => Reply::SessionOpened {
            request_id: r.u32()?,
            session_id: r.u32()?,
        },
        MUX_S_FAILURE => Reply::Failure {
            request_id: r.u32()?,
            reason: r.string()?,
        },
        MUX_S_PERMISSION_DENIED => Reply::PermissionDenied {
            request_id: r.u32()?,
            reason: r.string()?,
        },
        MUX_S_EXIT_MESSAGE => Reply::ExitMessage {
            session_id: r.u32()?,
            status: r.u32()?,
        },
        MUX_S_TTY_ALLOC_FAIL => Reply::TtyAllocFail {
            session_id: r.u32()?,
        },
        kind => Reply::Other { kind },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_type_and_version() {
        assert_eq!(hello(), [0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4]);
    }

    #[test]
    fn session_request_layout() {
        let mut want = vec![0, 0, 0, 47];
        want.extend([0x10, 0, 0, 0x02]); // MUX_C_NEW_SESSION
        want.extend([0, 0, 0, 1]); // request id
        want.extend([0, 0, 0, 0]); // reserved: empty string
        want.extend([0, 0, 0, 0]); // want tty
        want.extend([0, 0, 0, 0]); // want X11 forwarding
        want.extend([0, 0, 0, 0]); // want agent forwarding
        want.extend([0, 0, 0, 0]); // subsystem
        want.extend([0xff, 0xff, 0xff, 0xff]); // escape char: none
        want.extend([0, 0, 0, 0]); // terminal type: empty
        want.extend([0, 0, 0, 7]);
        want.extend(b"echo hi"); // command; no environment strings follow
        assert_eq!(new_session(1, "echo hi"), want);
    }

    #[test]
    fn replies_parse() {
        let hello = [0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4];
        assert_eq!(
            parse_packet(&hello).unwrap(),
            Some((Reply::Hello { version: 4 }, 12))
        );
        let opened = [0, 0, 0, 12, 0x80, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 5];
        assert_eq!(
            parse_packet(&opened).unwrap(),
            Some((
                Reply::SessionOpened {
                    request_id: 0,
                    session_id: 5
                },
                16
            ))
        );
        let mut failure = vec![0, 0, 0, 17, 0x80, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 5];
        failure.extend(b"nope!");
        assert_eq!(
            parse_packet(&failure).unwrap(),
            Some((
                Reply::Failure {
                    request_id: 2,
                    reason: "nope!".into()
                },
                21
            ))
        );
        let exit = [0, 0, 0, 12, 0x80, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 3];
        assert_eq!(
            parse_packet(&exit).unwrap(),
            Some((
                Reply::ExitMessage {
                    session_id: 5,
                    status: 3
                },
                16
            ))
        );
        let denied = [0, 0, 0, 12, 0x80, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            parse_packet(&denied).unwrap(),
            Some((Reply::PermissionDenied { .. }, 16))
        ));
        let tty = [0, 0, 0, 8, 0x80, 0, 0, 8, 0, 0, 0, 5];
        assert_eq!(
            parse_packet(&tty).unwrap(),
            Some((Reply::TtyAllocFail { session_id: 5 }, 12))
        );
    }

    /// The master's reason is the one place the protocol says "refused by the server".
    #[test]
    fn a_refusal_by_the_server_is_its_own_error() {
        assert!(matches!(
            MuxError::failure("Session open refused by peer".into()),
            MuxError::Refused(_)
        ));
        let other = MuxError::failure("open failed".into());
        assert!(matches!(other, MuxError::Failed(_)), "{other:?}");
        assert_eq!(
            other.to_string(),
            "the ControlMaster could not open the channel: open failed"
        );
    }

    #[test]
    fn partial_and_bad_packets() {
        assert_eq!(parse_packet(&[0, 0]).unwrap(), None);
        assert_eq!(parse_packet(&[0, 0, 0, 8, 0, 0, 0, 1]).unwrap(), None);
        // A reason longer than the packet.
        assert!(parse_packet(&[0, 0, 0, 12, 0x80, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(parse_packet(&[0x7f, 0, 0, 0]).is_err());
        // Two packets in one read: the first, and how much it took.
        let two = [
            0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 8, 0x80, 0, 0, 8, 0, 0, 0, 1,
        ];
        assert_eq!(
            parse_packet(&two).unwrap(),
            Some((Reply::Hello { version: 4 }, 12))
        );
    }

    /// A socket at the ControlPath that another user listens on gets nothing from us.
    #[tokio::test]
    async fn a_control_socket_of_another_user_is_refused() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("skipped: needs root to listen as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let path = dir.path().join("cm");
        let listen = "import socket,sys,time\ns=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen()\nprint('up',flush=True)\ntime.sleep(30)";
        let mut nobody = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(listen)
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut up = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(nobody.stdout.as_mut().unwrap()),
            &mut up,
        )
        .unwrap();
        assert_eq!(up.trim(), "up", "the listener as nobody did not start");
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let err = MuxChannel::session(&path, "true", null(), null(), null())
            .await
            .unwrap_err();
        let _ = nobody.kill();
        let _ = nobody.wait();
        assert!(
            matches!(err, MuxError::NotOurs { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
    }

    /// Against a real master (sshpyk-testhost's sshd): what the launcher relies on.
    mod with_a_master {
        use std::path::PathBuf;
        use std::process::Command;
        use std::time::{Duration, Instant};

        use sshpyk_testhost::RemoteHost;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        use tokio::net::unix::pipe;

        use super::super::*;

        struct Fixture {
            host: RemoteHost,
            control: PathBuf,
        }

        impl Fixture {
            fn start() -> Self {
                let host = RemoteHost::builder()
                    .control_master(true)
                    .start()
                    .expect("test sshd");
                let ssh = |args: &[&str]| {
                    Command::new("ssh")
                        .arg("-F")
                        .arg(host.ssh_config())
                        .args(args)
                        .arg(host.alias())
                        .output()
                        .unwrap()
                };
                let open = ssh(&["-o", "ControlMaster=yes", "-N", "-f"]);
                assert!(open.status.success(), "{open:?}");
                let config = String::from_utf8(ssh(&["-G"]).stdout).unwrap();
                let control = config
                    .lines()
                    .find_map(|l| l.strip_prefix("controlpath "))
                    .unwrap()
                    .into();
                Fixture { host, control }
            }

            fn ssh_exit(&self) {
                Command::new("ssh")
                    .arg("-F")
                    .arg(self.host.ssh_config())
                    .args(["-O", "exit"])
                    .arg(self.host.alias())
                    .output()
                    .unwrap();
            }

            /// Remote processes whose command line contains `needle`.
            fn remote(&self, needle: &str) -> usize {
                self.host
                    .remote_pids()
                    .into_iter()
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
                    })
                    .count()
            }

            /// A session with pipes for stdin/stdout and /dev/null for stderr.
            async fn session(&self, command: &str) -> (MuxChannel, pipe::Sender, pipe::Receiver) {
                let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
                let (stdin_remote, stdin_local) = pipe();
                let (stdout_local, stdout_remote) = pipe();
                let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
                let channel =
                    MuxChannel::session(&self.control, command, stdin_remote, stdout_remote, null)
                        .await
                        .unwrap();
                (
                    channel,
                    pipe::Sender::from_owned_fd(stdin_local).unwrap(),
                    pipe::Receiver::from_owned_fd(stdout_local).unwrap(),
                )
            }
        }

        impl Drop for Fixture {
            fn drop(&mut self) {
                self.ssh_exit();
            }
        }

        async fn eventually(mut check: impl FnMut() -> bool) -> bool {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if check() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            check()
        }

        #[tokio::test]
        async fn sessions_report_output_and_exit_status() {
            let f = Fixture::start();
            let (mut channel, mut stdin, stdout) =
                f.session("read line; echo got $line; exit 7").await;
            stdin.write_all(b"ping\n").await.unwrap();
            let mut lines = BufReader::new(stdout).lines();
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "got ping");
            assert_eq!(lines.next_line().await.unwrap(), None);
            assert_eq!(channel.exit_status().await.unwrap(), Some(7));
            assert_eq!(channel.exit_status().await.unwrap(), Some(7));
            let err = MuxChannel::session(
                &f.control.with_extension("missing"),
                "true",
                OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
                OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
                OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
            )
            .await
            .unwrap_err();
            assert!(
                err.to_string().contains("cannot reach the ControlMaster"),
                "{err}"
            );
        }

        /// Closing the control connection ends the channel, even with our pipe ends still open:
        /// what makes channels die with a SIGKILLed launcher.
        #[tokio::test]
        async fn closing_the_control_connection_ends_the_channel() {
            let f = Fixture::start();
            let (channel, _stdin, stdout) = f.session("exec cat - sshpyk-mux-probe-1").await;
            assert!(eventually(|| f.remote("sshpyk-mux-probe-1") == 1).await);
            drop(channel);
            assert!(
                eventually(|| f.remote("sshpyk-mux-probe-1") == 0).await,
                "the remote command outlived the control connection"
            );
            let mut rest = Vec::new();
            let mut stdout = stdout;
            tokio::time::timeout(Duration::from_secs(5), stdout.read_to_end(&mut rest))
                .await
                .expect("the master closes our stdout")
                .unwrap();
        }

        #[tokio::test]
        async fn a_session_ends_with_its_master_and_no_exit_status() {
            let f = Fixture::start();
            let (mut channel, _stdin, _stdout) = f.session("exec cat").await;
            f.ssh_exit();
            let status = tokio::time::timeout(Duration::from_secs(10), channel.exit_status())
                .await
                .expect("the channel ends with the master");
            assert_eq!(status.unwrap(), None);
        }
    }
}
