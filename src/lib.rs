//! sshpyk: run Jupyter kernels on remote machines over OpenSSH, as if they were local.

pub mod bounded;
pub mod cli;
pub mod cloud;
pub mod cmd;
pub mod coexistence;
pub mod connection;
pub mod control;
pub mod error;
pub mod jupyter;
pub mod jupyter_paths;
pub mod kernelspec;
pub mod launcher;
pub mod local_mount;
pub mod logs;
pub mod mount;
pub mod parent;
pub mod ports;
pub mod python_sshpyk;
pub mod remote;
pub mod runtime;
pub mod slurm;
pub mod ssh;
pub mod utc;
