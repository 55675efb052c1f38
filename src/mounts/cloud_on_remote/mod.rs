//! Cloud storage on the remote for a kernel's life (`sshpyk mounts add --backend ...`): a bucket
//! or share mounted with `rclone mount` where the kernel runs.
//!
//! # Where each piece lives
//!
//! - The kernelspec holds a [`CloudMount`] per mount: backend, non-secret settings, source,
//!   access, rclone flags, and the *name* of its secrets file, never a secret.
//! - Secrets (keys, passwords, tokens, key files' contents, a raw rclone config) live in a 0600
//!   file in a 0700 directory under sshpyk's config dir ([`secrets`]).
//! - The launcher renders the rclone config ([`CloudMount::render`], in a [`CloudMountRequest`])
//!   and sends it to the remote supervisor inside a frame of its session (stdin): the start
//!   request, or a live `mount_cloud` request. The supervisor (`src/supervisor/cloud.py`)
//!   writes it to a 0600 file in a 0700 directory on `/dev/shm` (a tmpfs that survives the
//!   user's sessions, unlike `$XDG_RUNTIME_DIR`), checks the source with `rclone lsf`, runs
//!   `rclone mount` as its own child, and at the kernel's end (or a `remove`) waits for rclone's
//!   uploads (bounded; what is left stays in rclone's cache dir, one per store and path, for the
//!   next mount to upload), unmounts, ends rclone and removes the file.
//!
//! So a secret is never in kernel.json, on a command line (here or there), or in a log.

pub mod backend;
mod obscure;
mod request;
pub(crate) mod secrets;

pub use backend::{Backend, CloudMount};
pub(crate) use request::CloudMountRequest;
