//! Our own Jupyter wire-protocol client: message signing and a small async kernel client
//! over the pure-Rust `zeromq` crate.
//!
//! The launcher itself never parses a client's messages (it carries bytes); it only sends
//! `interrupt_request` and `shutdown_request`, and the tests drive kernels. Why not
//! `jupyter-protocol`/`runtimelib`: their typed message model is far larger than the handful of
//! messages used here, and runtimelib brings its own ZeroMQ stack and runtime choices; this
//! client is small, bounded by timeouts everywhere, and tested against a real ipykernel.

pub mod client;
pub mod connection;
pub(crate) mod kernelspec;
pub(crate) mod paths;
pub mod wire;

pub use client::{ExecuteResult, KernelClient};
pub use wire::{Message, Signer};
