//! The launcher's end of the framed stream ([`super::protocol`]): the streams of every client
//! connection, which outlive sessions, and the tasks that read and write one session's frames
//! (a *wire*). A [`Link`] is the cheap, cloneable handle that the port forwarder and the
//! launcher use.
//!
//! While no session is up, clients keep their TCP connections: what they send waits in their
//! streams' windows (then TCP holds the rest), and requests wait too. The next session resumes
//! every stream where the supervisor left it ([`Link::resume`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::output;
use super::protocol::{
    Frame, LauncherNotice, Outbox, Received, Report, StreamReceived, SupervisorNotice,
    SupervisorRequest, Violation, ACK_BATCH, HEADER_LEN, WINDOW,
};
use crate::jupyter::connection::Channel;

/// Frames written to the session in one go, at most (many small ones are batched).
const WRITE_BATCH: usize = 256 * 1024;

#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: tokio::sync::Mutex<mpsc::UnboundedReceiver<Report>>,
    last_heard: Mutex<Instant>,
}

#[derive(Default)]
struct State {
    next_id: u32,
    /// By id: a resume replays streams in the order they were opened.
    streams: BTreeMap<u32, StreamState>,
    /// Requests sent and not yet acknowledged (stream 0).
    requests: Outbox,
    /// Report bytes received (stream 0); each is handled, so acknowledged, at once.
    reports_received: u64,
    /// Where frames go now; `None` while no session is up.
    wire: Option<Wire>,
    wires: u64,
}

struct Wire {
    id: u64,
    frames: mpsc::UnboundedSender<Frame>,
}

/// One client connection's stream, both directions.
struct StreamState {
    channel: Channel,
    out: Outbox,
    /// Wakes the client's sender when the window moves; dropped, tells it the stream is over.
    acked: watch::Sender<u64>,
    received: u64,
    written: u64,
    /// The `written` the supervisor was last told of: what it may send is bounded by it.
    ack_sent: u64,
    /// `None` once the client is gone: the stream then waits for the supervisor's `Close`.
    to_client: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl State {
    fn send(wire: &Option<Wire>, frame: Frame) {
        if let Some(wire) = wire {
            let _ = wire.frames.send(frame);
        }
    }

    fn received(&self) -> Received {
        Received {
            messages: self.reports_received,
            streams: self
                .streams
                .iter()
                .map(|(id, s)| StreamReceived {
                    id: *id,
                    received: s.received,
                    written: s.written,
                })
                .collect(),
        }
    }

    /// Installs a new wire; the old one's reader stops at its next frame.
    fn install(&mut self, frames: mpsc::UnboundedSender<Frame>) -> u64 {
        self.wires += 1;
        self.wire = Some(Wire {
            id: self.wires,
            frames,
        });
        self.wires
    }

    fn is_current(&self, wire: u64) -> bool {
        self.wire.as_ref().is_some_and(|w| w.id == wire)
    }
}

/// The tasks of one wire; dropping them ends it.
pub(crate) struct WireTasks {
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    ended: watch::Receiver<bool>,
}

impl WireTasks {
    /// Resolves once the session's frames have ended (EOF, an error, or a violation).
    pub(crate) async fn ended(&self) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
    }
}

impl Drop for WireTasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Link {
    pub(crate) fn new() -> Link {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        Link {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                reports_tx,
                reports: tokio::sync::Mutex::new(reports),
                last_heard: Mutex::new(Instant::now()),
            }),
        }
    }

    /// A panic elsewhere never makes the streams unusable (nothing here panics under the lock).
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The first request of a new supervisor, encoded for the session's preface: it counts as
    /// sent, so that it is never sent twice.
    pub(crate) fn first_request(&self, request: &SupervisorRequest) -> Vec<u8> {
        let json = serde_json::to_vec(request).expect("requests serialise");
        let mut frame = Vec::new();
        Frame::Message(json.clone()).encode_into(&mut frame);
        self.state().requests.push(json);
        frame
    }

    /// Carries frames over a new supervisor's session (nothing to resume).
    pub(crate) fn connect<R, W>(&self, from_remote: R, to_remote: W) -> WireTasks
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (frames, frames_rx) = mpsc::unbounded_channel();
        let wire = self.state().install(frames);
        self.spawn_wire(wire, from_remote, to_remote, frames_rx)
    }

    /// Carries frames over a new session to a running supervisor, which received what `peer`
    /// says and saw streams opened up to `last_open`: tells it how far we received, resends
    /// everything it lacks, and forgets the streams it closed.
    pub(crate) fn resume<R, W>(
        &self,
        from_remote: R,
        to_remote: W,
        peer: &Received,
        last_open: u32,
    ) -> Result<WireTasks, Violation>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (frames, frames_rx) = mpsc::unbounded_channel();
        let mut state = self.state();
        let state = &mut *state;
        let mut replay = Vec::new();
        state.requests.ack(peer.messages)?;
        for json in state.requests.since(peer.messages)? {
            replay.push(Frame::Message(json));
        }
        let theirs: HashMap<u32, &StreamReceived> =
            peer.streams.iter().map(|s| (s.id, s)).collect();
        let mut closed = Vec::new();
        for (&id, s) in state.streams.iter_mut() {
            let from = match theirs.get(&id) {
                Some(p) => {
                    s.out.ack(p.written)?;
                    s.acked.send_replace(p.written);
                    p.received
                }
                // It was closed on the remote, and told us (we may not have heard).
                None if id <= last_open => {
                    closed.push(id);
                    continue;
                }
                // It never arrived: open it again, with everything the client sent.
                None => {
                    replay.push(Frame::Open {
                        stream: id,
                        channel: s.channel,
                    });
                    s.out.acked()
                }
            };
            for bytes in s.out.since(from)? {
                replay.push(Frame::Data { stream: id, bytes });
            }
            if s.to_client.is_none() {
                replay.push(Frame::Close { stream: id });
            }
            // Our `Resume` tells it how far we wrote out: that is an ack.
            s.ack_sent = s.written;
        }
        for id in closed {
            // Its client's connection closes once what it was sent is written.
            state.streams.remove(&id);
        }
        let resume = LauncherNotice::Resume {
            received: state.received(),
        };
        let _ = frames.send(Frame::Notice(
            serde_json::to_vec(&resume).expect("notices serialise"),
        ));
        for frame in replay {
            let _ = frames.send(frame);
        }
        let wire = state.install(frames);
        // The supervisor just answered (its `Attached`): a silence check right after the
        // reattach must not count the outage.
        self.mark_heard_now();
        Ok(self.spawn_wire(wire, from_remote, to_remote, frames_rx))
    }

    fn spawn_wire<R, W>(
        &self,
        wire: u64,
        from_remote: R,
        to_remote: W,
        frames: mpsc::UnboundedReceiver<Frame>,
    ) -> WireTasks
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (ended_tx, ended) = watch::channel(false);
        let reader = tokio::spawn(read_frames(from_remote, self.clone(), wire, ended_tx));
        let writer = tokio::spawn(write_frames(to_remote, frames));
        WireTasks {
            reader,
            writer,
            ended,
        }
    }

    /// Sends a request now, or with the next session when none is up.
    pub(crate) fn request(&self, request: &SupervisorRequest) {
        let json = serde_json::to_vec(request).expect("requests serialise");
        let mut state = self.state();
        if state.requests.in_flight() + json.len() as u64 > WINDOW {
            tracing::warn!("too many requests wait for the remote supervisor; dropped {request:?}");
            return;
        }
        state.requests.push(json.clone());
        State::send(&state.wire, Frame::Message(json));
    }

    /// Sends a notice if a session is up (a notice is never kept for later).
    pub(crate) fn notice(&self, notice: &LauncherNotice) {
        let json = serde_json::to_vec(notice).expect("notices serialise");
        State::send(&self.state().wire, Frame::Notice(json));
    }

    /// The next report of the supervisor, from whichever session brought it. Cancel-safe.
    pub(crate) async fn next_report(&self) -> Option<Report> {
        self.shared.reports.lock().await.recv().await
    }

    /// The remote spoke just now (read back by [`Link::last_heard`]).
    fn mark_heard_now(&self) {
        *self
            .shared
            .last_heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// When the remote last sent anything (a pong, output, stream bytes).
    pub(crate) fn last_heard(&self) -> Instant {
        *self
            .shared
            .last_heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new stream to the kernel's `channel`, and the bytes the kernel sends on it (they end
    /// when the remote closes the stream). Opened now, or with the next session.
    pub(crate) fn open(&self, channel: Channel) -> (Stream, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (to_client, from_remote) = mpsc::unbounded_channel();
        let (acked_tx, acked) = watch::channel(0);
        let mut state = self.state();
        state.next_id = state.next_id.wrapping_add(1).max(1);
        let id = state.next_id;
        state.streams.insert(
            id,
            StreamState {
                channel,
                out: Outbox::default(),
                acked: acked_tx,
                received: 0,
                written: 0,
                ack_sent: 0,
                to_client: Some(to_client),
            },
        );
        State::send(
            &state.wire,
            Frame::Open {
                stream: id,
                channel,
            },
        );
        let stream = Stream {
            id,
            link: self.clone(),
            acked,
        };
        (stream, from_remote)
    }

    /// Handles one frame of wire `wire`; `Ok(false)` when that wire is no longer the current
    /// one (a newer session took over).
    fn handle(&self, wire: u64, frame: Frame) -> Result<bool, Violation> {
        let mut state = self.state();
        if !state.is_current(wire) {
            return Ok(false);
        }
        let State {
            streams,
            requests,
            reports_received,
            wire,
            ..
        } = &mut *state;
        match frame {
            Frame::Message(json) => {
                *reports_received += json.len() as u64;
                State::send(
                    wire,
                    Frame::Ack {
                        stream: 0,
                        offset: *reports_received,
                    },
                );
                drop(state);
                match serde_json::from_slice::<Report>(&json) {
                    Ok(report) => {
                        let _ = self.shared.reports_tx.send(report);
                    }
                    Err(e) => tracing::debug!("unknown report from the supervisor: {e}"),
                }
            }
            Frame::Notice(json) => {
                drop(state);
                match serde_json::from_slice::<SupervisorNotice>(&json) {
                    // The kernel's own stdout/stderr, as a local kernel's would show.
                    Ok(SupervisorNotice::Output { text }) => output::print(&text),
                    Ok(SupervisorNotice::Pong) => {}
                    Ok(SupervisorNotice::Attached { .. }) => {
                        tracing::debug!("an attach report on a running session; ignored")
                    }
                    Err(e) => tracing::debug!("unknown notice from the supervisor: {e}"),
                }
            }
            Frame::Data { stream, bytes } => {
                let Some(s) = streams.get_mut(&stream) else {
                    return Ok(true);
                };
                s.received += bytes.len() as u64;
                if s.received > s.ack_sent + WINDOW {
                    return Err(Violation(format!(
                        "{} bytes on stream {stream} beyond the {WINDOW}-byte window",
                        s.received - s.ack_sent - WINDOW
                    )));
                }
                if let Some(to_client) = &s.to_client {
                    let _ = to_client.send(bytes);
                }
            }
            Frame::Ack { stream: 0, offset } => requests.ack(offset)?,
            Frame::Ack { stream, offset } => {
                if let Some(s) = streams.get_mut(&stream) {
                    s.out.ack(offset)?;
                    s.acked.send_replace(offset);
                }
            }
            Frame::Close { stream } => {
                // Unless we closed first, answer, so that the supervisor forgets it too.
                if let Some(s) = streams.remove(&stream) {
                    if s.to_client.is_some() {
                        State::send(wire, Frame::Close { stream });
                    }
                }
            }
            Frame::Open { stream, .. } => {
                return Err(Violation(format!("an open of stream {stream}")));
            }
        }
        Ok(true)
    }

    /// The wire ended: frames go nowhere until the next one (unless a newer one took over).
    fn wire_ended(&self, wire: u64) {
        let mut state = self.state();
        if state.is_current(wire) {
            state.wire = None;
        }
    }
}

/// One client connection's share of the link. Dropping it closes the stream.
pub(crate) struct Stream {
    id: u32,
    link: Link,
    acked: watch::Receiver<u64>,
}

impl Stream {
    /// Sends client bytes (at most a window's worth at a time), once the window allows, now or
    /// with the next session; `false` when the stream is over.
    pub(crate) async fn send(&self, bytes: &[u8]) -> bool {
        let mut acked = self.acked.clone();
        loop {
            {
                let mut state = self.link.state();
                let State { streams, wire, .. } = &mut *state;
                let Some(s) = streams.get_mut(&self.id) else {
                    return false;
                };
                acked.borrow_and_update();
                if s.out.in_flight() + bytes.len() as u64 <= WINDOW {
                    s.out.push(bytes.to_vec());
                    State::send(
                        wire,
                        Frame::Data {
                            stream: self.id,
                            bytes: bytes.to_vec(),
                        },
                    );
                    return true;
                }
            }
            if acked.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Counts `bytes` written to the client; acknowledged in batches.
    pub(crate) fn written(&self, bytes: usize) {
        let mut state = self.link.state();
        let State { streams, wire, .. } = &mut *state;
        if let Some(s) = streams.get_mut(&self.id) {
            s.written += bytes as u64;
            if s.written - s.ack_sent >= ACK_BATCH {
                s.ack_sent = s.written;
                State::send(
                    wire,
                    Frame::Ack {
                        stream: self.id,
                        offset: s.written,
                    },
                );
            }
        }
    }
}

impl Drop for Stream {
    /// The client is gone: the stream closes after what it sent, and is forgotten once the
    /// supervisor answers.
    fn drop(&mut self) {
        let mut state = self.link.state();
        let State { streams, wire, .. } = &mut *state;
        if let Some(s) = streams.get_mut(&self.id) {
            s.to_client = None;
            State::send(wire, Frame::Close { stream: self.id });
        }
    }
}

/// Hands each frame of wire `wire` to its stream or to the reports, until the session ends.
async fn read_frames<R: AsyncRead + Unpin>(
    mut from_remote: R,
    link: Link,
    wire: u64,
    ended: watch::Sender<bool>,
) {
    // However the reader stops (even aborted), the wire is over.
    struct Ended(Link, u64, watch::Sender<bool>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.wire_ended(self.1);
            self.2.send_replace(true);
        }
    }
    let _ended = Ended(link.clone(), wire, ended);
    loop {
        let frame = match next_frame(&mut from_remote).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(violation) => {
                tracing::warn!("{violation}; closing the session");
                return;
            }
        };
        link.mark_heard_now();
        match link.handle(wire, frame) {
            Ok(true) => {}
            Ok(false) => return,
            Err(violation) => {
                tracing::warn!("{violation}; closing the session");
                return;
            }
        }
    }
}

/// The next whole frame; `Ok(None)` at the end of the session.
pub(super) async fn next_frame<R: AsyncRead + Unpin>(
    from_remote: &mut R,
) -> Result<Option<Frame>, Violation> {
    let mut header = [0u8; HEADER_LEN];
    if from_remote.read_exact(&mut header).await.is_err() {
        return Ok(None);
    }
    let (stream, kind, len) = Frame::parse_header(&header)?;
    let mut payload = Vec::with_capacity(len);
    match from_remote.take(len as u64).read_to_end(&mut payload).await {
        Ok(n) if n == len => Frame::decode(stream, kind, payload).map(Some),
        _ => Ok(None),
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut to_remote: W,
    mut frames: mpsc::UnboundedReceiver<Frame>,
) {
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    while let Some(frame) = frames.recv().await {
        buf.clear();
        frame.encode_into(&mut buf);
        while buf.len() < WRITE_BATCH {
            match frames.try_recv() {
                Ok(frame) => frame.encode_into(&mut buf),
                Err(_) => break,
            }
        }
        if to_remote.write_all(&buf).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A link on an in-memory session, and the supervisor's ends of it.
    fn wired() -> (Link, WireTasks, DuplexStream, DuplexStream) {
        let link = Link::new();
        let (from_remote, remote_out) = duplex(1 << 16);
        let (to_remote, remote_in) = duplex(1 << 16);
        let wire = link.connect(from_remote, to_remote);
        (link, wire, remote_out, remote_in)
    }

    fn encode(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            frame.encode_into(&mut out);
        }
        out
    }

    async fn read_frames_from(remote_in: &mut DuplexStream, n: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        while frames.len() < n {
            let frame = tokio::time::timeout(Duration::from_secs(5), next_frame(remote_in))
                .await
                .expect("a frame in time")
                .unwrap()
                .expect("the session is open");
            frames.push(frame);
        }
        frames
    }

    #[tokio::test]
    async fn data_past_the_window_ends_the_session_and_memory_stays_bounded() {
        let (link, wire, mut remote_out, _remote_in) = wired();
        let (_stream, _to_client) = link.open(Channel::Iopub);
        // A hostile remote sends 512 MiB on a stream whose client never reads.
        let chunk = encode(&[Frame::Data {
            stream: 1,
            bytes: vec![0; 1 << 20],
        }]);
        let mut sent = 0usize;
        for _ in 0..512 {
            if remote_out.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        tokio::time::timeout(Duration::from_secs(5), wire.ended())
            .await
            .expect("the session ends");
        // What was taken in is the window, one frame past it, and what the pipe holds.
        assert!(
            sent <= WINDOW as usize + 2 * chunk.len() + (1 << 16),
            "{sent} bytes taken in"
        );
    }

    #[tokio::test]
    async fn acks_of_what_was_never_sent_end_the_session() {
        let (link, wire, mut remote_out, _remote_in) = wired();
        let (stream, _to_client) = link.open(Channel::Shell);
        assert!(stream.send(b"hello").await);
        // Up to what was sent is fine, however often; then one byte more is not.
        let mut frames = vec![
            Frame::Ack {
                stream: 1,
                offset: 5,
            };
            10_000
        ];
        frames.push(Frame::Ack {
            stream: 1,
            offset: 6,
        });
        remote_out.write_all(&encode(&frames)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), wire.ended())
            .await
            .expect("the session ends");
        // And a request's ack past what was requested too, on a fresh link.
        let (_link, wire, mut remote_out, _remote_in) = wired();
        remote_out
            .write_all(&encode(&[Frame::Ack {
                stream: 0,
                offset: 1,
            }]))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), wire.ended())
            .await
            .expect("the session ends");
    }

    #[tokio::test]
    async fn a_resume_resends_what_the_supervisor_lacks_and_forgets_what_it_closed() {
        let (link, old_wire, mut old_out, mut old_in) = wired();
        let (kept, mut kept_from_remote) = link.open(Channel::Shell);
        let (closed, _) = link.open(Channel::Iopub);
        assert!(kept.send(b"abcdef").await);
        assert!(closed.send(b"x").await);
        // The supervisor sends "12" on the kept stream, then the session is lost.
        old_out
            .write_all(&encode(&[Frame::Data {
                stream: 1,
                bytes: b"12".to_vec(),
            }]))
            .await
            .unwrap();
        assert_eq!(kept_from_remote.recv().await.unwrap(), b"12");
        kept.written(2);
        let _ = read_frames_from(&mut old_in, 4).await; // two opens, two data
        drop((old_wire, old_out, old_in));
        // Sent while no session is up: a request, more bytes, a stream opened meanwhile.
        link.request(&SupervisorRequest::Arm);
        assert!(kept.send(b"gh").await);
        let (opened, _) = link.open(Channel::Control);
        assert!(opened.send(b"new").await);

        let (from_remote, mut remote_out) = duplex(1 << 16);
        let (to_remote, mut remote_in) = duplex(1 << 16);
        let peer = Received {
            messages: 0,
            streams: vec![StreamReceived {
                id: 1,
                received: 4,
                written: 2,
            }],
        };
        let _wire = link.resume(from_remote, to_remote, &peer, 2).unwrap();
        let frames = read_frames_from(&mut remote_in, 6).await;
        let Frame::Notice(resume) = &frames[0] else {
            panic!("{frames:?}")
        };
        let resume: serde_json::Value = serde_json::from_slice(resume).unwrap();
        assert_eq!(
            resume,
            serde_json::json!({"op": "resume", "received": {"messages": 0, "streams": [
                {"id": 1, "received": 2, "written": 2}, {"id": 3, "received": 0, "written": 0}]}})
        );
        assert_eq!(frames[1], Frame::Message(br#"{"op":"arm"}"#.to_vec()));
        let data = |stream, bytes: &[u8]| Frame::Data {
            stream,
            bytes: bytes.to_vec(),
        };
        assert_eq!(frames[2..4], [data(1, b"ef"), data(1, b"gh")]);
        assert_eq!(
            frames[4..6],
            [
                Frame::Open {
                    stream: 3,
                    channel: Channel::Control
                },
                data(3, b"new")
            ]
        );
        // Stream 2 (closed on the remote while we were away) is over for its client.
        assert!(!closed.send(b"y").await);
        // The new session carries on where the old one stopped.
        remote_out
            .write_all(&encode(&[Frame::Data {
                stream: 1,
                bytes: b"34".to_vec(),
            }]))
            .await
            .unwrap();
        assert_eq!(kept_from_remote.recv().await.unwrap(), b"34");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(100), remote_in.read_to_end(&mut rest))
            .await;
        assert!(rest.is_empty(), "nothing sent twice: {rest:?}");
    }
}
