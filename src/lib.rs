//! sshpyk: run Jupyter kernels on remote machines over OpenSSH, as if they were local.

pub mod cli;
pub mod cloud;
pub mod cmd;
pub mod connection;
pub mod control;
pub mod error;
pub mod jupyter;
pub mod kernelspec;
pub mod launcher;
pub mod mount;
pub mod parent;
pub mod ports;
pub mod remote;
pub mod runtime;
pub mod ssh;
