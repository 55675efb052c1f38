//! Everything that talks to OpenSSH: the ssh config, the ControlMaster and its mux protocol,
//! commands on the remote through it (`shell`), and the remote python after the user's init
//! snippet (`init`).

pub(crate) mod config;
pub(crate) mod init;
mod interactive;
pub(crate) mod master;
pub(crate) mod mux;
pub(crate) mod shell;

pub(crate) use interactive::connect_hint;
pub(crate) use master::Master;

/// A close-on-exec pipe (read end, write end) for a session's stdio.
pub(crate) fn pipe() -> crate::error::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup_error(e.into()))
}

/// A local failure while preparing a session's descriptors.
pub(crate) fn setup_error(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::Local(format!("cannot set up a session: {e}"))
}
