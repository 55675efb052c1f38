//! Everything that talks to OpenSSH: the ssh config, the ControlMaster, remote sessions and the
//! per-connection channels behind the five forwarded ports.

pub mod config;
pub mod forward;
pub mod master;
pub mod mux;
pub mod process;

pub use config::{declared_aliases, EffectiveConfig};
pub use master::Master;
