//! sshpyk: run Jupyter kernels on remote machines over OpenSSH, as if they were local.

pub mod bounded;
pub mod cli;
pub mod cmd;
pub mod control;
pub mod error;
pub mod jupyter;
pub mod launcher;
pub mod logs;
pub mod mounts;
pub mod parent;
pub mod ports;
pub mod probe;
pub mod python_sshpyk;
pub mod runtime;
pub mod settings;
pub mod slurm;
pub mod ssh;
pub mod supervisor;
pub mod utc;
