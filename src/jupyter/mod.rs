//! Our own Jupyter wire-protocol client: message signing and a small async kernel client
//! over the pure-Rust `zeromq` crate.

pub mod client;
pub mod wire;

pub use client::{ExecuteResult, KernelClient};
pub use wire::{Message, Signer};
