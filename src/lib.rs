//! sshpyk: run Jupyter kernels on remote machines over OpenSSH.

pub mod connection;
pub mod error;
pub mod jupyter;
