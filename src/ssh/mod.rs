//! Everything that talks to OpenSSH: the ssh config, the ControlMaster and its mux protocol.

pub mod config;
pub mod init;
mod interactive;
pub mod master;
pub mod mux;
pub mod shell;

pub use config::{declared_aliases, EffectiveConfig};
pub use interactive::connect_hint;
pub use master::Master;

/// A close-on-exec pipe (read end, write end) for a session's stdio.
pub fn pipe() -> crate::error::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup_error(e.into()))
}

/// A local failure while preparing a session's descriptors.
pub fn setup_error(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::Local(format!("cannot set up a session: {e}"))
}
