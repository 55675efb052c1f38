//! The five local ports. The launcher binds them itself (never `ssh -L`, whose forwards belong
//! to the master and outlive a SIGKILLed launcher) and carries each accepted connection as a
//! stream of the supervisor's session ([`crate::supervisor::Link`]): nothing is opened on the ssh
//! connection and nothing is started on the remote per client connection, however many clients
//! come and go. Connections stay open, and new ones are taken, while the session is down: their
//! streams resume with the next one.

use std::net::{SocketAddr, TcpListener as StdListener};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::jupyter::connection::{Channel, ConnectionInfo};
use crate::supervisor::Link;

/// The most a client read becomes in one frame.
const READ_CHUNK: usize = 64 * 1024;

/// The five listeners, bound before anything touches the network so that a port in use fails
/// at once.
pub(crate) struct Listeners(Vec<(Channel, StdListener)>);

impl Listeners {
    pub(crate) fn bind(info: &ConnectionInfo) -> Result<Self> {
        let ip: std::net::IpAddr = info
            .ip
            .parse()
            .map_err(|_| Error::Invalid(format!("ip '{}' is not an IP address", info.ip)))?;
        let mut bound = Vec::with_capacity(5);
        for (channel, port) in info.ports() {
            let addr = SocketAddr::new(ip, port);
            let listener = bind_reusable(addr).map_err(|e| {
                Error::Local(format!(
                    "local port {port} ({} channel) of the connection file cannot be bound on {ip}: {e}; another process holds it, so let Jupyter pick new ports (restart the kernel from a fresh connection file)",
                    channel.name()
                ))
            })?;
            bound.push((channel, listener));
        }
        Ok(Listeners(bound))
    }
}

/// Binds with SO_REUSEADDR (as libzmq does), so that a restart can reuse ports whose previous
/// connections linger in TIME_WAIT.
fn bind_reusable(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)?.into_std()
}

/// Accept loops and the connections they carry. Dropping it stops accepting and closes every
/// client connection.
pub(crate) struct Forwarder {
    tasks: JoinSet<()>,
}

impl Forwarder {
    /// Carries every connection on `link`'s streams.
    pub(crate) fn start(listeners: Listeners, link: Link) -> Result<Self> {
        let mut tasks = JoinSet::new();
        for (channel, listener) in listeners.0 {
            listener
                .set_nonblocking(true)
                .map_err(Error::io("cannot configure a listener"))?;
            let listener =
                TcpListener::from_std(listener).map_err(Error::io("cannot register a listener"))?;
            tasks.spawn(accept_loop(listener, channel, link.clone()));
        }
        Ok(Forwarder { tasks })
    }

    /// Stops accepting and ends every client connection now.
    pub(crate) async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn accept_loop(listener: TcpListener, channel: Channel, link: Link) {
    let mut connections = JoinSet::new();
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("{} port: accept failed: {e}", channel.name());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        tracing::debug!("{} connection from {peer}", channel.name());
        connections.spawn(carry(link.clone(), channel, socket));
        // Reap finished connections without waiting for them.
        while connections.try_join_next().is_some() {}
    }
}

/// Carries one client connection as a stream of `link` until either end closes it.
async fn carry(link: Link, channel: Channel, socket: TcpStream) {
    let (stream, mut from_remote) = link.open(channel);
    let (mut from_client, mut to_client) = socket.into_split();
    let up = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !stream.send(&buf[..n]).await {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        while let Some(bytes) = from_remote.recv().await {
            if to_client.write_all(&bytes).await.is_err() {
                return;
            }
            stream.written(bytes.len());
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    tracing::debug!("{} connection closed", channel.name());
}
