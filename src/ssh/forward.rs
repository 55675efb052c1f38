//! The five local ports. The launcher binds them itself and, for each accepted connection, hands
//! the socket to the master over its control socket (the mux protocol, as `ssh -W` would): bytes
//! then flow between the socket and the master with no copy and no process in between, and the
//! channel ends when our control connection closes, so nothing outlives the launcher. (Forwards
//! added with `ssh -O forward` would belong to the master and keep the ports bound after a
//! SIGKILL.)

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::mux::MuxChannel;
use super::Master;
use crate::connection::{Channel, ConnectionInfo};
use crate::error::{Error, Result};
use crate::remote::{relay_command, Endpoint};

/// The five listeners, bound before anything touches the network so that a port in use fails
/// at once.
pub struct Listeners(Vec<(Channel, StdListener)>);

impl Listeners {
    pub fn bind(info: &ConnectionInfo) -> Result<Self> {
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

/// Accept loops and their channels. Dropping it stops accepting and closes every channel's
/// control connection, which ends the channel; so does the kernel for a SIGKILLed launcher.
pub struct Forwarder {
    tasks: JoinSet<()>,
}

impl Forwarder {
    /// `link` says whether the master is up: while it is down (reconnecting), connections wait
    /// in the listen backlog instead of asking for channels that could only fail.
    pub fn start(
        listeners: Listeners,
        master: &Master,
        endpoints: &HashMap<Channel, Endpoint>,
        remote_python: &str,
        link: watch::Receiver<bool>,
    ) -> Result<Self> {
        let mut tasks = JoinSet::new();
        for (channel, listener) in listeners.0 {
            let endpoint = endpoints.get(&channel).ok_or_else(|| {
                Error::Remote(format!(
                    "the remote supervisor reported no {} endpoint",
                    channel.name()
                ))
            })?;
            let target = Target {
                endpoint: endpoint.clone(),
                control_socket: master.control_socket().to_owned(),
                remote_python: remote_python.to_string(),
            };
            listener
                .set_nonblocking(true)
                .map_err(Error::io("cannot configure a listener"))?;
            let listener =
                TcpListener::from_std(listener).map_err(Error::io("cannot register a listener"))?;
            tasks.spawn(accept_loop(listener, channel, target, link.clone()));
        }
        Ok(Forwarder { tasks })
    }

    /// Stops accepting and ends every channel now.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Where one local port leads.
#[derive(Clone)]
struct Target {
    endpoint: Endpoint,
    control_socket: PathBuf,
    remote_python: String,
}

async fn accept_loop(
    listener: TcpListener,
    channel: Channel,
    target: Target,
    mut link: watch::Receiver<bool>,
) {
    let mut channels = JoinSet::new();
    loop {
        if link.wait_for(|up| *up).await.is_err() {
            return;
        }
        // Stop accepting the moment the link goes down: the channel could only fail.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = link.wait_for(|up| !*up) => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("{} port: accept failed: {e}", channel.name());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let target = target.clone();
        // Each channel lives in its task until the master ends it; dropping the task (the
        // forwarder stopped) closes its control connection, and the master then ends it too.
        channels.spawn(async move {
            let name = channel.name();
            let mut mux = match open_channel(&target, stream).await {
                Ok(mux) => mux,
                Err(e) => {
                    tracing::warn!("{name} channel for {peer} failed: {e}");
                    return;
                }
            };
            tracing::debug!("{name} channel for {peer} → {:?}", target.endpoint);
            match mux.exit_status().await {
                Ok(status) => {
                    tracing::debug!("{name} channel for {peer} closed (status {status:?})")
                }
                Err(e) => tracing::debug!("{name} channel for {peer}: {e}"),
            }
        });
        // Reap finished channels without waiting for them.
        while channels.try_join_next().is_some() {}
    }
}

/// Hands the accepted socket to the master: a stdio forward to a port on the remote loopback,
/// or a session running the relay to a Unix socket.
async fn open_channel(
    target: &Target,
    stream: tokio::net::TcpStream,
) -> std::io::Result<MuxChannel> {
    let stream = stream.into_std()?;
    // The master sets the modes it wants; start from the default.
    stream.set_nonblocking(false)?;
    let socket: OwnedFd = stream.into();
    match &target.endpoint {
        Endpoint::Tcp(port) => {
            MuxChannel::stdio_forward(&target.control_socket, *port, socket).await
        }
        Endpoint::Ipc(path) => {
            let command = relay_command(&target.remote_python, path);
            let stderr = OwnedFd::from(std::fs::File::open("/dev/null")?);
            let stdout = socket.try_clone()?;
            MuxChannel::session(&target.control_socket, &command, socket, stdout, stderr).await
        }
    }
}
