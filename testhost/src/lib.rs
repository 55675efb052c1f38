//! Throwaway "remote hosts" for sshpyk's tests, demo and benchmark: a real OpenSSH sshd with its
//! own keys, reached through a generated `ssh_config` alias, either inside a network namespace
//! (its own address, a link that can be cut) or on loopback.
//!
//! ```no_run
//! let host = sshpyk_testhost::RemoteHost::builder().alias("remote").start()?;
//! let out = std::process::Command::new("ssh")
//!     .arg("-F").arg(host.ssh_config()).arg(host.alias()).arg("echo ok")
//!     .output()?;
//! assert_eq!(out.stdout, b"ok\n");
//! # anyhow::Ok(())
//! ```

mod host;
mod net;
mod procs;
mod registry;
mod venv;

use std::net::{Ipv4Addr, TcpListener};
use std::thread;

pub use host::{Mode, RemoteHost, RemoteHostBuilder};
pub use venv::python_venv;

/// A loopback port that was free a moment ago (another process may take it before you bind).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A loopback TCP listener that accepts connections and never sends a byte: a host that accepts
/// TCP but never answers. A background thread accepts and holds every connection, so the socket
/// stays open for the rest of the process even once the returned handle is dropped.
pub fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let accepting = listener.try_clone().expect("cloning the listener");
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in accepting.incoming().flatten() {
            held.push(stream);
        }
    });
    (listener, port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn silent_listener_accepts_and_stays_silent() {
        let (_listener, port) = silent_listener();
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let err = stream.read(&mut [0; 1]).unwrap_err();
        assert!(matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
