//! Throwaway "remote hosts" for sshpyk's tests, demo and benchmark: a real OpenSSH sshd with its
//! own keys, reached through a generated `ssh_config` alias, either inside a network namespace
//! (its own address, a link that can be cut) or on loopback. With
//! [`RemoteHostBuilder::rtt`] (and [`RemoteHostBuilder::rate`]) a delay proxy in this process
//! puts a long link's round-trip time in front of it.
//!
//! ```no_run
//! let host = sshpyk_testhost::RemoteHost::builder().alias("remote").start()?;
//! let out = std::process::Command::new("ssh")
//!     .arg("-F").arg(host.ssh_config()).arg(host.alias()).arg("echo ok")
//!     .output()?;
//! assert_eq!(out.stdout, b"ok\n");
//! # anyhow::Ok(())
//! ```

mod delay;
mod host;
mod net;
mod procs;
mod registry;
mod slurm;
mod sshd_files;
mod users;
mod venv;

use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;

pub use host::{Mode, RemoteHost, RemoteHostBuilder};
pub use slurm::{slurm_installed, SLURM_NODE, SLURM_PARTITION};
pub use users::{
    password_user_password, TestUser, CHATTY_BASHRC_STDERR, CHATTY_BASHRC_STDOUT,
    CHATTY_PROFILE_STDERR, CHATTY_PROFILE_STDOUT, CHATTY_USER, FISH_USER, PASSWORD_USER, TCSH_USER,
};
pub use venv::{python_venv, python_venv_for};

/// Where [`free_port`] picks ports: below Linux's ephemeral range (32768-60999 by default).
const PORT_RANGE: Range<u16> = 20000..32000;
/// Ports each process walks before it runs into the next process's stretch.
const PORT_STRETCH: u32 = 500;

/// A loopback port that is free now and that no other call in this process returns.
///
/// Binding port 0 and releasing it (what Jupyter does) is racy under parallel tests: the kernel
/// hands the same ephemeral ports to every other bind-0 and to every outgoing connection (ssh
/// clients, ZMQ clients), so a released port is often taken again before the launcher binds it
/// ("Address already in use"). Ports below the ephemeral range are never handed out that way;
/// here they are given in order, never twice in a process, each process starting its own
/// stretch of the range (from its pid) so that parallel test processes rarely meet, and a port
/// something already listens on is skipped.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let len = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let next = NEXT
        .get_or_init(|| AtomicU32::new(std::process::id() % (len / PORT_STRETCH) * PORT_STRETCH));
    let first = next.load(Ordering::Relaxed);
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        // Wrapping around would hand out a port twice; no test process needs that many.
        assert!(n - first < len, "free_port: all {len} ports handed out");
        let port = PORT_RANGE.start + (n % len) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
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
    fn free_port_is_bindable_and_never_repeats() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| PORT_RANGE.contains(p)), "{ports:?}");
        let mut distinct = ports.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len());
        TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).unwrap();
    }
}
