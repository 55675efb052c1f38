//! One error type for the whole tool, mapped to documented exit codes (see README.rst).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure sshpyk reports. The message is one line that names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: flags, names, files that do not exist.
    #[error("{0}")]
    Invalid(String),
    #[error("connection file {}: {reason}", path.display())]
    ConnectionFile { path: PathBuf, reason: String },
    /// The ssh connection could not be made (refused, authentication, no route, ssh missing).
    #[error("{0}")]
    Ssh(String),
    /// The server refused one more session on a connection (sshd's `MaxSessions`).
    #[error("{0}")]
    SessionRefused(String),
    /// The remote side is not usable (python, jupyter_client, kernelspec, runtime dir, sshfs).
    #[error("{0}")]
    Remote(String),
    #[error("{what} did not finish within {secs} s; {hint}")]
    Timeout {
        what: String,
        secs: f64,
        hint: String,
    },
    /// A local resource is unavailable (a port in use, a directory not writable).
    #[error("{0}")]
    Local(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The remote kernel is gone while the launcher was still responsible for it.
    #[error("{0}")]
    KernelLost(String),
    /// `list` checked a kernel and found an error (its report is complete all the same).
    #[error("{0}")]
    ChecksFailed(String),
}

impl Error {
    /// Documented in README.rst, "Exit codes".
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::ConnectionFile { .. } => 3,
            Error::Ssh(_) | Error::SessionRefused(_) => 4,
            Error::Remote(_) => 5,
            Error::Timeout { .. } => 6,
            Error::Local(_) | Error::Io { .. } => 7,
            Error::KernelLost(_) => 8,
            Error::ChecksFailed(_) => 9,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
