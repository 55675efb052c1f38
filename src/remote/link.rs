//! The launcher's end of the framed stream ([`super::protocol`]): a task that writes frames, a
//! task that reads them, and the client connections riding on them. A [`Link`] is the cheap,
//! cloneable handle that the port forwarder and the launcher use; when the session ends, every
//! stream on it ends too, so clients reconnect (to the same local ports) once a new one is up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::protocol::{Frame, Report, Request, HEADER_LEN, WINDOW};
use crate::connection::Channel;

/// Credit is returned in batches of this many bytes.
const CREDIT_BATCH: u32 = WINDOW / 4;
/// Frames written to the session in one go, at most (many small ones are batched).
const WRITE_BATCH: usize = 256 * 1024;

#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    frames: mpsc::UnboundedSender<Frame>,
    streams: Mutex<Streams>,
    closed: watch::Receiver<bool>,
    last_heard: Mutex<Instant>,
}

#[derive(Default)]
struct Streams {
    next_id: u32,
    open: HashMap<u32, Slot>,
}

/// What the reader needs to deliver to one stream.
struct Slot {
    to_client: mpsc::UnboundedSender<Vec<u8>>,
    credit: Arc<Semaphore>,
}

/// The tasks behind a [`Link`]; dropping them ends the link.
pub struct LinkTasks {
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for LinkTasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Link {
    /// Starts reading frames from `from_remote` and writing to `to_remote`. Reports (other than
    /// the kernel's output, which goes to our stderr, and pongs) arrive on the returned receiver,
    /// which closes when the session ends.
    pub fn start<R, W>(
        from_remote: R,
        to_remote: W,
    ) -> (Link, LinkTasks, mpsc::UnboundedReceiver<Report>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (frames_tx, frames_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(false);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let link = Link {
            shared: Arc::new(Shared {
                frames: frames_tx,
                streams: Mutex::new(Streams::default()),
                closed: closed_rx,
                last_heard: Mutex::new(Instant::now()),
            }),
        };
        let reader = tokio::spawn(read_frames(
            from_remote,
            link.clone(),
            reports_tx,
            closed_tx,
        ));
        let writer = tokio::spawn(write_frames(to_remote, frames_rx));
        (link, LinkTasks { reader, writer }, reports_rx)
    }

    /// Sends a request; `false` once the session is gone.
    pub fn request(&self, request: &Request) -> bool {
        let json = serde_json::to_vec(request).expect("requests serialise");
        self.send(Frame::Message(json))
    }

    fn send(&self, frame: Frame) -> bool {
        !self.is_closed() && self.shared.frames.send(frame).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves once the session has ended.
    pub async fn closed(&self) {
        let mut closed = self.shared.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// When the remote last sent anything (a pong, output, stream bytes).
    pub fn last_heard(&self) -> Instant {
        *self.shared.last_heard.lock().expect("not poisoned")
    }

    /// A new stream to the kernel's `channel`, and the bytes the kernel sends on it (they end
    /// when the remote closes the stream or the session ends); `None` once the session is gone.
    pub fn open(&self, channel: Channel) -> Option<(Stream, mpsc::UnboundedReceiver<Vec<u8>>)> {
        let (to_client, from_remote) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        let id = {
            let mut streams = self.shared.streams.lock().expect("not poisoned");
            streams.next_id = streams.next_id.wrapping_add(1).max(1);
            let id = streams.next_id;
            streams.open.insert(
                id,
                Slot {
                    to_client,
                    credit: credit.clone(),
                },
            );
            id
        };
        let guard = StreamGuard {
            id,
            link: self.clone(),
        };
        if !self.send(Frame::Open {
            stream: id,
            channel,
        }) {
            return None;
        }
        Some((
            Stream {
                id,
                unacknowledged: AtomicU32::new(0),
                credit,
                guard,
            },
            from_remote,
        ))
    }
}

/// One client connection's share of the link: what it sends. Dropping it closes the stream.
pub struct Stream {
    id: u32,
    /// Bytes written to the client and not yet returned as credit (the two directions of a
    /// connection share the stream within one task).
    unacknowledged: AtomicU32,
    /// Bytes we may still send; closed when the stream or the session ends.
    credit: Arc<Semaphore>,
    guard: StreamGuard,
}

impl Stream {
    /// Sends client bytes, once the window allows; `false` when the stream or session is over.
    pub async fn send(&self, bytes: &[u8]) -> bool {
        match self.credit.acquire_many(bytes.len() as u32).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.guard.link.send(Frame::Data {
            stream: self.id,
            bytes: bytes.to_vec(),
        })
    }

    /// Counts `bytes` written to the client; credit goes back in quarter windows, not per
    /// message: a frame back over ssh for every small message would double the packets (and
    /// wake-ups) of a request/reply exchange.
    pub fn written(&self, bytes: usize) {
        let unacknowledged = self.unacknowledged.fetch_add(bytes as u32, Relaxed) + bytes as u32;
        if unacknowledged >= CREDIT_BATCH {
            self.unacknowledged.fetch_sub(unacknowledged, Relaxed);
            self.guard.link.send(Frame::Credit {
                stream: self.id,
                bytes: unacknowledged,
            });
        }
    }
}

/// Forgets the stream and tells the remote, when the client connection is done.
struct StreamGuard {
    id: u32,
    link: Link,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let known = self
            .link
            .shared
            .streams
            .lock()
            .expect("not poisoned")
            .open
            .remove(&self.id)
            .is_some();
        // Unknown: the remote closed it first, and needs no answer.
        if known {
            self.link.send(Frame::Close { stream: self.id });
        }
    }
}

/// Marks the link closed and ends every stream on it, however the reader stops (even aborted).
struct CloseOnDrop {
    link: Link,
    closed: watch::Sender<bool>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.closed.send_replace(true);
        let open = std::mem::take(&mut self.link.shared.streams.lock().expect("not poisoned").open);
        for slot in open.into_values() {
            slot.credit.close();
        }
    }
}

/// Hands each frame from the supervisor to its stream or to the reports, until the session ends.
async fn read_frames<R: AsyncRead + Unpin>(
    mut from_remote: R,
    link: Link,
    reports: mpsc::UnboundedSender<Report>,
    closed: watch::Sender<bool>,
) {
    let _close = CloseOnDrop {
        link: link.clone(),
        closed,
    };
    while let Some(frame) = next_frame(&mut from_remote, &link).await {
        match frame {
            Frame::Message(json) => match serde_json::from_slice::<Report>(&json) {
                // The kernel's own stdout/stderr, as a local kernel's would show.
                Ok(Report::Output { text }) => eprint!("{text}"),
                Ok(Report::Pong) => {}
                Ok(report) => {
                    let _ = reports.send(report);
                }
                Err(e) => tracing::debug!("unknown report from the supervisor: {e}"),
            },
            Frame::Data { stream, bytes } => {
                let streams = link.shared.streams.lock().expect("not poisoned");
                if let Some(slot) = streams.open.get(&stream) {
                    let _ = slot.to_client.send(bytes);
                }
            }
            Frame::Credit { stream, bytes } => {
                let streams = link.shared.streams.lock().expect("not poisoned");
                if let Some(slot) = streams.open.get(&stream) {
                    slot.credit.add_permits(bytes as usize);
                }
            }
            Frame::Close { stream } => {
                let slot = link
                    .shared
                    .streams
                    .lock()
                    .expect("not poisoned")
                    .open
                    .remove(&stream);
                if let Some(slot) = slot {
                    slot.credit.close();
                }
            }
            Frame::Open { .. } => tracing::debug!("the supervisor opened a stream; ignored"),
        }
    }
}

/// The next whole frame from the supervisor (the link hears from it); `None` at the end of the
/// session or at a malformed frame, which ends it too.
async fn next_frame<R: AsyncRead + Unpin>(from_remote: &mut R, link: &Link) -> Option<Frame> {
    let mut header = [0u8; HEADER_LEN];
    from_remote.read_exact(&mut header).await.ok()?;
    let (stream, kind, len) = match Frame::parse_header(&header) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!("{e}; closing the session");
            return None;
        }
    };
    let mut payload = Vec::with_capacity(len);
    match from_remote.take(len as u64).read_to_end(&mut payload).await {
        Ok(n) if n == len => {}
        _ => return None,
    }
    *link.shared.last_heard.lock().expect("not poisoned") = Instant::now();
    match Frame::decode(stream, kind, payload) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::warn!("{e}; closing the session");
            None
        }
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
