//! A userspace delay proxy: a long link (a cloud VM a region away) in front of the test sshd.
//!
//! This machine's kernel has neither netem nor iptables, so the delay is added here: a loopback
//! listener in this process forwards each accepted connection to sshd, and each direction holds
//! every chunk it reads for half the round-trip time before writing it on. Each direction is a
//! reader thread and a writer thread joined by a queue of (deliver at, bytes): the reader keeps
//! reading while earlier chunks wait, so a bulk transfer flows at full speed one RTT late instead
//! of one chunk per RTT, and order is kept. An optional rate cap paces the reader (the time each
//! chunk takes on the wire), which pushes back on the sender through TCP as a slow link would.
//!
//! A cut link (`ip link set … down` on the host's veth) stalls the proxy's connection to sshd
//! exactly as it stalls a direct one; the client's side stays open, as a client far away would
//! see it. The cut is thus at sshd's end of the long path: bytes sent during a cut have already
//! crossed the delay and wait at the cut, so after link-up only the way back costs RTT/2 (a cut
//! at the laptop's end would cost the whole RTT).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::free_port;

/// The largest chunk read at once.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction (up to 64 MiB): far above what a 50 ms path holds at loopback
/// speed, yet a bound when the receiving side stops reading.
const QUEUE_CHUNKS: usize = 1024;
/// How long the proxy keeps trying to reach sshd for a new client (a cut link drops the SYNs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Each connection attempt is this long, so that a stopping proxy is noticed between them.
const CONNECT_SLICE: Duration = Duration::from_secs(1);

/// What the proxy puts between client and sshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub rtt: Duration,
    /// Bytes per second in each direction; `None` is unlimited.
    pub rate: Option<u64>,
}

/// A running proxy; dropping it closes the listener and every connection through it.
#[derive(Debug)]
pub(crate) struct DelayProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Both sockets of every open connection: shutting them down wakes every thread blocked on
    /// them, which then ends on its own.
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Shared {
    /// Keeps a clone of `stream` for [`Shared::close_all`]; false once the proxy is stopping.
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `close_all` takes after setting the flag: no socket
        // registered after that is missed.
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        match stream.try_clone() {
            Ok(clone) => {
                sockets.entry(id).or_default().push(clone);
                true
            }
            Err(_) => false,
        }
    }

    fn forget(&self, id: u64) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.remove(&id);
    }

    fn close_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for stream in sockets.values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream` through
    /// `link`.
    pub fn start(upstream: SocketAddr, link: Link) -> Result<Self> {
        let listener = bind_free_port()?;
        let port = listener.local_addr().context("proxy address")?.port();
        let shared = Arc::new(Shared::default());
        let acceptor = thread::Builder::new()
            .name("delay-proxy".to_string())
            .spawn({
                let shared = shared.clone();
                move || accept_loop(&listener, upstream, link, &shared)
            })
            .context("starting the delay proxy's thread")?;
        Ok(DelayProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor from accept(), which then sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Connection threads are not joined: each ends within half an RTT of its sockets being
        // shut down, or after its connection attempt's slice; none holds the process.
        self.shared.close_all();
    }
}

/// `free_port` can race with another process between its check and this bind: try the next.
fn bind_free_port() -> Result<TcpListener> {
    let mut last = None;
    for _ in 0..5 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, free_port())) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt")).context("binding the delay proxy's port")
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, link: Link, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        // A failed spawn drops the client: it sees the connection closed.
        let _ = thread::Builder::new()
            .name("delay-proxy-conn".to_string())
            .spawn(move || serve(client, upstream, link, &shared));
    }
}

fn serve(client: TcpStream, upstream: SocketAddr, link: Link, shared: &Shared) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if shared.register(id, &client) {
        // A real path's TCP handshake costs a round trip before sshd sees the connection.
        thread::sleep(link.rtt);
        if let Some(server) = connect(upstream, shared) {
            if shared.register(id, &server) {
                relay(client, server, link);
            }
        }
    }
    shared.forget(id);
}

/// Connects to sshd, retrying in short slices until `CONNECT_TIMEOUT` or the proxy stops.
fn connect(upstream: SocketAddr, shared: &Shared) -> Option<TcpStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline && !shared.stopping.load(Ordering::SeqCst) {
        match TcpStream::connect_timeout(&upstream, CONNECT_SLICE) {
            Ok(stream) => return Some(stream),
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
    None
}

/// Both directions until both ended.
fn relay(client: TcpStream, server: TcpStream, link: Link) {
    // Delay comes from the queue; Nagle would add its own on top.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let down = thread::Builder::new()
        .name("delay-proxy-down".to_string())
        .spawn(move || direction(server2, client2, link));
    direction(client, server, link);
    if let Ok(down) = down {
        let _ = down.join();
    }
}

enum Event {
    Data(Vec<u8>),
    /// The sender closed its side: pass the FIN on.
    Eof,
    /// Reading failed (reset): close the other side too.
    Reset,
}

/// One direction: this thread reads `from` and queues each chunk with its delivery time; a
/// writer thread delivers it to `to` when that time comes.
fn direction(mut from: TcpStream, to: TcpStream, link: Link) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
    let Ok(from2) = from.try_clone() else { return };
    let writer = thread::Builder::new()
        .name("delay-proxy-write".to_string())
        .spawn(move || deliver(&rx, to, &from2));
    if writer.is_err() {
        return;
    }
    let one_way = link.rtt / 2;
    let mut buf = vec![0; CHUNK];
    let mut wire_free = Instant::now();
    loop {
        if link.rate.is_some() {
            // The link takes the next chunk only once the previous one is on the wire.
            sleep_until(wire_free);
        }
        let event = match from.read(&mut buf) {
            Ok(0) => Event::Eof,
            Ok(n) => Event::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => Event::Reset,
        };
        let now = Instant::now();
        let sent = match (&event, link.rate) {
            (Event::Data(bytes), Some(rate)) => {
                wire_free = now + Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                wire_free
            }
            _ => now,
        };
        let last = !matches!(event, Event::Data(_));
        if tx.send((sent + one_way, event)).is_err() || last {
            break;
        }
    }
    drop(tx);
    if let Ok(writer) = writer {
        let _ = writer.join();
    }
}

fn deliver(rx: &Receiver<(Instant, Event)>, mut to: TcpStream, from: &TcpStream) {
    for (at, event) in rx {
        sleep_until(at);
        match event {
            Event::Data(bytes) => {
                if to.write_all(&bytes).is_err() {
                    // The receiver is gone: end the whole connection, as a reset would.
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Event::Eof => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Event::Reset => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; each connection echoes until EOF.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn connect_to(proxy: &DelayProxy) -> TcpStream {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    fn echo_time(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        stream.write_all(b"ping").unwrap();
        let mut back = [0; 4];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        started.elapsed()
    }

    #[test]
    fn each_round_trip_takes_the_rtt_and_order_is_kept() {
        let rtt = Duration::from_millis(80);
        let proxy = DelayProxy::start(echo_server(), Link { rtt, rate: None }).unwrap();
        let mut stream = connect_to(&proxy);
        for _ in 0..3 {
            let took = echo_time(&mut stream);
            assert!(took >= rtt && took < rtt * 3, "{took:?}");
        }
        // 1000 small writes in a row come back whole and in order, in about one RTT: the
        // chunks are pipelined, not delivered one per RTT.
        let started = Instant::now();
        let sent: Vec<u8> = (0..1000u32).flat_map(|i| i.to_be_bytes()).collect();
        let reader = {
            let mut stream = stream.try_clone().unwrap();
            let len = sent.len();
            thread::spawn(move || {
                let mut back = vec![0; len];
                stream.read_exact(&mut back).unwrap();
                back
            })
        };
        for piece in sent.chunks(4) {
            stream.write_all(piece).unwrap();
        }
        assert_eq!(reader.join().unwrap(), sent);
        assert!(started.elapsed() < rtt * 4, "{:?}", started.elapsed());
    }

    #[test]
    fn the_rate_cap_paces_a_transfer() {
        let link = Link {
            rtt: Duration::ZERO,
            rate: Some(1_000_000),
        };
        let proxy = DelayProxy::start(echo_server(), link).unwrap();
        let mut stream = connect_to(&proxy);
        let mut reader = stream.try_clone().unwrap();
        let receiving = thread::spawn(move || {
            let mut back = vec![0; 500_000];
            reader.read_exact(&mut back).unwrap();
        });
        let started = Instant::now();
        stream.write_all(&[7; 500_000]).unwrap();
        receiving.join().unwrap();
        // Both directions are capped: half a second each way, overlapping.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn dropping_the_proxy_closes_its_port_and_its_connections() {
        let proxy = DelayProxy::start(
            echo_server(),
            Link {
                rtt: Duration::from_millis(20),
                rate: None,
            },
        )
        .unwrap();
        let mut stream = connect_to(&proxy);
        echo_time(&mut stream);
        let port = proxy.port();
        drop(proxy);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        let mut rest = Vec::new();
        // EOF (or a reset), not a read timeout: the connection was closed.
        match stream.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_ne!(e.kind(), ErrorKind::WouldBlock),
        }
    }
}
