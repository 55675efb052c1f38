//! The five local ports. The launcher binds them itself and, for each accepted connection, hands
//! the socket to `ssh -W` riding the master: bytes then flow between the socket and the master
//! with no copy in between, and nothing outlives the launcher. (Forwards added with
//! `ssh -O forward` would belong to the master and keep the ports bound after a SIGKILL.)

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::OwnedFd;
use std::process::Stdio;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{process, Master};
use crate::connection::{Channel, ConnectionInfo};
use crate::error::{Error, Result};
use crate::remote::Endpoint;

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

/// Accept loops and their `ssh -W` children. Dropping it stops accepting and kills every child
/// (kill_on_drop); a SIGKILLed launcher's children get PDEATHSIG.
pub struct Forwarder {
    tasks: JoinSet<()>,
}

impl Forwarder {
    /// `link` says whether the master is up: while it is down (reconnecting), connections wait
    /// in the listen backlog instead of spawning ssh clients that could only fail.
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
                master: master.clone(),
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
struct Target {
    endpoint: Endpoint,
    master: Master,
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
        // Stop accepting the moment the link goes down: an ssh client started without a master
        // would open a direct connection of its own.
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
        match spawn_channel(&target, stream) {
            Ok(mut child) => {
                tracing::debug!(
                    "{} channel for {peer} → {:?}",
                    channel.name(),
                    target.endpoint
                );
                channels.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(e) => tracing::warn!("{} channel for {peer} failed: {e}", channel.name()),
        }
        // Reap finished channels without waiting for them.
        while channels.try_join_next().is_some() {}
    }
}

fn spawn_channel(
    target: &Target,
    stream: tokio::net::TcpStream,
) -> std::io::Result<tokio::process::Child> {
    let stream = stream.into_std()?;
    // ssh (or the master it hands the socket to) sets its own modes; start from the default.
    stream.set_nonblocking(false)?;
    let socket: OwnedFd = stream.into();
    let mut cmd = target
        .endpoint
        .connect_command(&target.master, &target.remote_python);
    cmd.stdin(Stdio::from(socket.try_clone()?))
        .stdout(Stdio::from(socket))
        .stderr(Stdio::null());
    process::tie_to_parent(&mut cmd);
    cmd.spawn()
}
