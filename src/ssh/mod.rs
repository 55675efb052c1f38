//! Everything that talks to OpenSSH: the ssh config, the ControlMaster and its mux protocol.

pub mod config;
pub mod master;
pub mod mux;

pub use config::{declared_aliases, EffectiveConfig};
pub use master::Master;
