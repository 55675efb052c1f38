//! The one byte stream between the launcher and the remote supervisor: typed messages and every
//! ZMQ connection of the kernel, multiplexed over the supervisor's ssh session.
//!
//! # Why one session carries everything
//!
//! A stock sshd allows 10 *sessions* per connection (`MaxSessions`), and each ZMQ connection a
//! client makes used to cost one session plus a python relay started on the remote: two notebooks
//! on one host ran out, each reconnection waited for a python to start (so iopub re-subscribed
//! after the kernel had published), and login-shell banners landed in the byte streams. Two
//! shapes remove the per-connection cost:
//!
//! - **streams framed over the supervisor's session** (this module): opening a stream is one
//!   frame, pipelined with its first bytes, so a client's bytes reach the kernel without a round
//!   trip; it works where the server forbids forwarding (`AllowTcpForwarding no`, common on HPC
//!   login nodes); nothing listens on the remote, so no token is needed to keep other users out.
//! - a supervisor listener reached by forwarding channels (`direct-tcpip`, not counted by
//!   `MaxSessions`): the master would copy the bytes, but each connection costs a channel-open
//!   round trip and a token exchange, the listener is one more thing other users of the host can
//!   reach, and it still needs the first shape as a fallback for `AllowTcpForwarding no`.
//!
//! So one shape serves every host. Measured in `bench/run` against a local kernel and the Python
//! sshpyk (README.rst, Benchmarks). The supervisor relays between frames and the kernel's Unix
//! sockets in one select loop, with no thread or process per connection.
//!
//! # Frames
//!
//! `u32 stream | u8 kind | u32 length | payload`, big endian. Stream 0 carries [`SupervisorRequest`]s and
//! [`Report`]s as JSON (`Message`), and [`LauncherNotice`]s and [`SupervisorNotice`]s, which are
//! not sequenced (`Notice`: pings, the kernel's output, the resume handshake). Other streams are
//! ZMQ connections, opened by the launcher.
//!
//! # Streams resume, they are never reset by a lost session
//!
//! Each side counts, per stream and direction, the bytes it sent and the bytes it received and
//! wrote out (stream 0: message payload bytes). A sender keeps what it sent until the receiver
//! acknowledges it wrote it out (`Ack`, an absolute offset, so that a lost ack costs nothing);
//! what it keeps is its window, [`WINDOW`] bytes per stream, so memory is bounded on both ends
//! and a stalled client (or kernel) stops only its own stream. When a session is lost, both
//! ends keep their streams, the clients' TCP connections and the kernel's sockets open; on the
//! next session the supervisor says how far it received on every stream
//! ([`SupervisorNotice::Attached`]), the launcher answers in kind ([`LauncherNotice::Resume`]),
//! and each resends the rest: nothing is lost, nothing is delivered twice. A stream one side
//! does not list was closed by it (both sides echo `Close`, so a closed stream is forgotten
//! only once the other side knows).
//!
//! A peer that sends beyond the window, or acknowledges what was never sent, is broken or
//! hostile: the session ends ([`Violation`]).
//!
//! Before the first frame, the remote login shell may print anything (cluster banners, `module`
//! and conda notices): the supervisor first writes [`MARKER`] on a line of its own and the
//! launcher ignores everything before it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::jupyter::connection::Channel;
/// Built with the cloud mounts, which read and render their secrets; carried as it is.
pub(crate) use crate::mounts::cloud_on_remote::CloudMountRequest;

/// The line that starts the framed stream.
pub(crate) const MARKER: &str = "sshpyk-frames-2";
/// Bytes one direction of a stream may have unacknowledged. At 50 ms of round trip, 4 MiB
/// less an ack batch in flight allows ~70 MB/s per stream (window / RTT); on a LAN it changes
/// nothing.
pub(crate) const WINDOW: u64 = 4 << 20;
/// Bytes written out between two acks of a stream: a frame back over ssh for every small
/// message would double the packets (and wake-ups) of a request/reply exchange.
pub(crate) const ACK_BATCH: u64 = WINDOW / 8;
/// The largest payload either side sends in one frame (and so the most it accepts).
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;
pub(crate) const HEADER_LEN: usize = 9;
/// What the supervisor keeps of the kernel's output per kernel while no session is up (and
/// unacknowledged), before it closes the stream that holds the most.
pub(crate) const OUTAGE_BOUND: u64 = 64 << 20;

const MESSAGE: u8 = 0;
const OPEN: u8 = 1;
const DATA: u8 = 2;
const CLOSE: u8 = 3;
const ACK: u8 = 4;
const NOTICE: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A [`SupervisorRequest`] or [`Report`] as JSON, on stream 0; sequenced and acknowledged.
    Message(Vec<u8>),
    /// A [`LauncherNotice`] or [`SupervisorNotice`] as JSON, on stream 0; never resent.
    Notice(Vec<u8>),
    /// A client connected to the kernel's `channel`: the supervisor connects to it.
    Open {
        stream: u32,
        channel: Channel,
    },
    Data {
        stream: u32,
        bytes: Vec<u8>,
    },
    /// Either side is done with the stream (after all its data); the other closes its end,
    /// answers with `Close` unless it closed first, and forgets it.
    Close {
        stream: u32,
    },
    /// The receiver wrote out the stream's bytes up to `offset` (stream 0: messages).
    Ack {
        stream: u32,
        offset: u64,
    },
}

impl Frame {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let ack;
        let (stream, kind, payload): (u32, u8, &[u8]) = match self {
            Frame::Message(json) => (0, MESSAGE, json),
            Frame::Notice(json) => (0, NOTICE, json),
            Frame::Open { stream, channel } => (*stream, OPEN, channel.name().as_bytes()),
            Frame::Data { stream, bytes } => (*stream, DATA, bytes),
            Frame::Close { stream } => (*stream, CLOSE, &[]),
            Frame::Ack { stream, offset } => {
                ack = offset.to_be_bytes();
                (*stream, ACK, &ack)
            }
        };
        out.extend_from_slice(&stream.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The stream, kind and payload length in a header.
    pub(crate) fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(u32, u8, usize), Violation> {
        let stream = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(Violation(format!("a frame of {len} bytes")));
        }
        Ok((stream, header[4], len))
    }

    pub(crate) fn decode(stream: u32, kind: u8, payload: Vec<u8>) -> Result<Frame, Violation> {
        Ok(match kind {
            MESSAGE => Frame::Message(payload),
            NOTICE => Frame::Notice(payload),
            OPEN => {
                let name = String::from_utf8_lossy(&payload);
                let channel = Channel::ALL
                    .into_iter()
                    .find(|c| c.name() == name)
                    .ok_or_else(|| Violation(format!("unknown channel '{name}'")))?;
                Frame::Open { stream, channel }
            }
            DATA => Frame::Data {
                stream,
                bytes: payload,
            },
            CLOSE => Frame::Close { stream },
            ACK => {
                let offset: [u8; 8] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| Violation("an ack without 8 bytes".into()))?;
                Frame::Ack {
                    stream,
                    offset: u64::from_be_bytes(offset),
                }
            }
            other => return Err(Violation(format!("frame kind {other}"))),
        })
    }
}

/// What a broken or hostile supervisor did: the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation(pub(crate) String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the remote supervisor sent {}", self.0)
    }
}

/// What one side sent on one stream and the other has not acknowledged yet: the bytes from
/// offset `acked` to `sent`, kept to be resent after a lost session.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    acked: u64,
    sent: u64,
    chunks: VecDeque<Vec<u8>>,
}

impl Outbox {
    /// Where what is kept starts.
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes sent and not acknowledged.
    pub(crate) fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }

    pub(crate) fn push(&mut self, chunk: Vec<u8>) {
        self.sent += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// The receiver wrote out everything before `offset`: forget it.
    pub(crate) fn ack(&mut self, offset: u64) -> Result<(), Violation> {
        if offset < self.acked || offset > self.sent {
            return Err(Violation(format!(
                "an ack for offset {offset} of a stream acknowledged to {} and sent to {}",
                self.acked, self.sent
            )));
        }
        let mut drop = offset - self.acked;
        while drop > 0 {
            let head = self.chunks.front_mut().expect("sent bytes are kept");
            if head.len() as u64 <= drop {
                drop -= head.len() as u64;
                self.chunks.pop_front();
            } else {
                head.drain(..drop as usize);
                drop = 0;
            }
        }
        self.acked = offset;
        Ok(())
    }

    /// What the receiver has not received when it received up to `offset`, in chunks.
    pub(crate) fn since(&self, offset: u64) -> Result<Vec<Vec<u8>>, Violation> {
        if offset < self.acked || offset > self.sent {
            return Err(Violation(format!(
                "a resume from offset {offset} of a stream acknowledged to {} and sent to {}",
                self.acked, self.sent
            )));
        }
        let mut skip = offset - self.acked;
        let mut out = Vec::new();
        for chunk in &self.chunks {
            if skip >= chunk.len() as u64 {
                skip -= chunk.len() as u64;
            } else {
                out.push(chunk[skip as usize..].to_vec());
                skip = 0;
            }
        }
        Ok(out)
    }
}

/// How far one side received on every stream it has open, for the other to resend the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Received {
    /// Message payload bytes received on stream 0 (each is handled, so written, at once).
    pub(crate) messages: u64,
    pub(crate) streams: Vec<StreamReceived>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamReceived {
    pub(crate) id: u32,
    pub(crate) received: u64,
    pub(crate) written: u64,
}

/// What the launcher tells the supervisor without sequencing.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum LauncherNotice {
    /// Answered with [`SupervisorNotice::Pong`]; like every frame, it renews the lease.
    Ping,
    /// The launcher's half of the resume handshake, after [`SupervisorNotice::Attached`].
    Resume { received: Received },
}
// One more notice reaches a supervisor on a Slurm node, never from the launcher:
// `{"op": "relayed_attach"}`, from the relay on the login node (src/slurm/slurm_relay.py) when a
// new session took over the step's stdio; answered with [`SupervisorNotice::Attached`].

/// What the supervisor tells the launcher without sequencing.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum SupervisorNotice {
    Pong,
    /// A line the kernel printed on its stdout/stderr (best effort: dropped while away).
    Output {
        text: String,
    },
    /// A new session reached the supervisor: what it received on every stream, and the highest
    /// stream it ever saw opened (a stream above it was never opened, one at or below it that
    /// is not listed was closed).
    Attached {
        pid: u32,
        received: Received,
        last_open: u32,
    },
}

/// What the launcher asks of the supervisor.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum SupervisorRequest {
    /// The first message: start the kernel. Holds the key, so it only ever travels here.
    Start {
        key: String,
        signature_scheme: String,
        kernel_name: String,
        orphan_timeout: f64,
        /// How often the launcher pings; the lease lasts `orphan_timeout` plus this.
        ping_interval: f64,
        /// Set for the kernel as given (no expansion), after everything else.
        env: BTreeMap<String, String>,
        /// The kernel's working directory (`~` expanded there); `None`: the remote home.
        cwd: Option<String>,
        /// Mounted before the kernel starts; a failure fails the start.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cloud_mounts: Vec<CloudMountRequest>,
        /// The stream window and [`OUTAGE_BOUND`], so that both ends agree.
        window: u64,
        outage_bound: u64,
        /// How long an unmount waits for a read-write cloud mount's uploads (the kernel's
        /// shutdown timeout); what is left then is kept for the next mount of that store.
        upload_wait: f64,
    },
    /// From now on a lost launcher is waited for (`orphan_timeout`), not ended at once.
    Arm,
    /// A signal for the kernel's process group, by name (`SIGINT`).
    Signal { signal: String },
    /// End the kernel and everything it started: SIGTERM, then SIGKILL after `grace` seconds.
    Stop { grace: f64 },
    /// Mount cloud storage on a running kernel; answered with [`Report::Cloud`] of the same id.
    MountCloud { id: u64, mount: CloudMountRequest },
    /// Unmount the cloud mount at `remote`; answered with [`Report::Cloud`].
    UnmountCloud { id: u64, remote: String },
    /// The state of every cloud mount; answered with [`Report::Cloud`].
    CloudStatus { id: u64 },
}

/// The supervisor's answer to a cloud request: its error, if any, and every mount's state.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CloudReport {
    pub(crate) id: u64,
    pub(crate) error: Option<CloudError>,
    pub(crate) mounts: Vec<CloudMountState>,
}

/// (The supervisor also names the kind of error, for its own tests; nothing here tells kinds
/// apart.)
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CloudError {
    /// One line that says what to fix.
    pub(crate) message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CloudMountState {
    pub(crate) remote: String,
    pub(crate) state: CloudState,
    /// rclone's last error line, when failing.
    #[serde(default)]
    pub(crate) error: Option<String>,
    /// Files written and not uploaded yet.
    #[serde(default)]
    pub(crate) pending: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CloudState {
    Mounted,
    /// rclone ended, or the mount is gone.
    Failing,
}

/// What the supervisor tells the launcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Report {
    Ready(Ready),
    /// The start failed; `message` says what to fix.
    Error {
        message: String,
    },
    Exited(Exit),
    Cloud(CloudReport),
    /// While no session was up, what the kernel sent on `channel` passed the supervisor's
    /// bound: the stream was closed and `bytes` dropped (its client reconnects).
    Dropped {
        channel: String,
        bytes: u64,
    },
}

/// What the supervisor reports once the kernel's sockets are up.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Ready {
    pub(crate) pid: u32,
    pub(crate) hostname: String,
    pub(crate) transport: String,
    pub(crate) run_dir: String,
    /// The supervisor's interpreter, absolute: what a reconnection runs (no init snippet).
    #[serde(default)]
    pub(crate) python: String,
    pub(crate) interrupt_mode: InterruptMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum InterruptMode {
    Signal,
    Message,
}

/// Why the supervisor ended the kernel itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EndReason {
    /// The lease ran out: the launcher was away longer than the orphan timeout.
    Orphaned,
    /// The launcher's channel closed while its ssh connection lived: the launcher is gone.
    LauncherGone,
    /// The launcher asked ([`SupervisorRequest::Stop`]).
    Stopped,
}

/// How the remote kernel ended.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Exit {
    pub(crate) status: Option<i32>,
    pub(crate) signal: Option<i32>,
    #[serde(default)]
    pub(crate) tail: Vec<String>,
    #[serde(default)]
    pub(crate) reason: Option<EndReason>,
}

impl Exit {
    /// The launcher's own exit status: the kernel's, or 128+signal as a shell reports it.
    pub(crate) fn code(&self) -> i32 {
        match (self.status, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match (self.status, self.signal) {
            (Some(0), _) => "exited normally".into(),
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "ended".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let mut bytes = Vec::new();
        frame.encode_into(&mut bytes);
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let (stream, kind, len) = Frame::parse_header(&header).unwrap();
        assert_eq!(len, bytes.len() - HEADER_LEN);
        let back = Frame::decode(stream, kind, bytes[HEADER_LEN..].to_vec()).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame::Message(br#"{"op":"ping"}"#.to_vec()));
        roundtrip(Frame::Open {
            stream: 7,
            channel: Channel::Iopub,
        });
        roundtrip(Frame::Data {
            stream: 1,
            bytes: vec![0, 1, 255],
        });
        roundtrip(Frame::Close { stream: 9 });
        roundtrip(Frame::Ack {
            stream: 3,
            offset: 1 << 40,
        });
        roundtrip(Frame::Notice(br#"{"op":"ping"}"#.to_vec()));
    }

    #[test]
    fn an_outbox_keeps_what_is_unacknowledged_and_resends_from_any_offset() {
        let mut out = Outbox::default();
        out.push(b"abc".to_vec());
        out.push(b"defg".to_vec());
        assert_eq!(out.in_flight(), 7);
        assert_eq!(out.since(2).unwrap(), [b"c".to_vec(), b"defg".to_vec()]);
        out.ack(4).unwrap();
        assert_eq!(out.in_flight(), 3);
        assert_eq!(out.since(4).unwrap(), [b"efg".to_vec()]);
        assert_eq!(out.since(7).unwrap(), Vec::<Vec<u8>>::new());
        // Backwards, or beyond what was sent: a broken peer.
        assert!(out.ack(3).is_err());
        assert!(out.ack(8).is_err());
        assert!(out.since(3).is_err());
        assert!(out.since(8).is_err());
        out.ack(7).unwrap();
        assert_eq!(out.in_flight(), 0);
    }

    #[test]
    fn the_handshake_is_typed_on_both_ends() {
        let notice: SupervisorNotice = serde_json::from_str(
            r#"{"event": "attached", "pid": 9, "last_open": 4, "received": {"messages": 10, "streams": [{"id": 3, "received": 5, "written": 4}]}}"#,
        )
        .unwrap();
        match notice {
            SupervisorNotice::Attached {
                pid,
                received,
                last_open,
            } => {
                assert_eq!((pid, last_open, received.messages), (9, 4, 10));
                assert_eq!(received.streams[0].written, 4);
            }
            other => panic!("{other:?}"),
        }
        let resume = serde_json::to_value(LauncherNotice::Resume {
            received: Received::default(),
        })
        .unwrap();
        assert_eq!(
            resume,
            serde_json::json!({"op": "resume", "received": {"messages": 0, "streams": []}})
        );
    }

    #[test]
    fn header_layout() {
        let mut bytes = Vec::new();
        Frame::Data {
            stream: 0x0102_0304,
            bytes: b"ab".to_vec(),
        }
        .encode_into(&mut bytes);
        assert_eq!(bytes, [1, 2, 3, 4, DATA, 0, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut header = [0u8; HEADER_LEN];
        header[5..9].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        assert!(Frame::parse_header(&header).is_err());
        assert!(Frame::decode(1, 99, vec![]).is_err());
        assert!(Frame::decode(1, OPEN, b"nope".to_vec()).is_err());
    }

    #[test]
    fn requests_and_reports_are_tagged() {
        let json = serde_json::to_value(SupervisorRequest::Signal {
            signal: "SIGINT".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "signal", "signal": "SIGINT"})
        );
        let report: Report = serde_json::from_str(
            r#"{"event": "exited", "status": null, "signal": 9, "tail": [], "reason": "launcher_gone"}"#,
        )
        .unwrap();
        match report {
            Report::Exited(exit) => {
                assert_eq!(exit.code(), 137);
                assert_eq!(exit.reason, Some(EndReason::LauncherGone));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cloud_requests_are_tagged_and_never_show_their_config() {
        let mount = CloudMountRequest {
            remote: "/mnt/b".into(),
            source: "sshpyk:b".into(),
            config: "[sshpyk]\nsecret_access_key = S3CR3T\n".into(),
            flags: vec!["--read-only".into()],
            label: "s3:b".into(),
        };
        let json = serde_json::to_value(SupervisorRequest::MountCloud {
            id: 7,
            mount: mount.clone(),
        })
        .unwrap();
        assert_eq!(json["op"], "mount_cloud");
        assert_eq!(json["mount"]["config"], mount.config);
        assert!(!format!("{mount:?}").contains("S3CR3T"));
        let report: Report = serde_json::from_str(
            r#"{"event": "cloud", "id": 7, "error": null, "mounts": [{"remote": "/mnt/b", "state": "failing", "error": "gone"}]}"#,
        )
        .unwrap();
        match report {
            Report::Cloud(r) => {
                assert_eq!((r.id, r.mounts[0].state), (7, CloudState::Failing));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let exit = |status, signal| Exit {
            status,
            signal,
            ..Default::default()
        };
        assert_eq!(exit(Some(0), None).code(), 0);
        assert_eq!(exit(Some(3), None).code(), 3);
        assert_eq!(exit(None, Some(9)).code(), 137);
    }
}
