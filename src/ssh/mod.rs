//! Everything that talks to OpenSSH: the ssh config, the ControlMaster and its mux protocol,
//! child processes.

pub mod config;
pub mod master;
pub mod mux;
pub mod process;

pub use config::{declared_aliases, EffectiveConfig};
pub use master::Master;
