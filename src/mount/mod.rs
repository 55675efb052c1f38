//! Mounts: local directories on the remote for the kernel's lifetime.

mod spec;

pub use spec::MountSpec;
