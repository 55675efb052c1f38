//! The integration tests: one test binary (as ripgrep's tests/integration), so that the helpers
//! compile once and every test links against the same sshpyk.
//!
//! Run all of it with `cargo test --test integration`, one module with a filter on its path:
//! `cargo test --test integration cloud_on_remote::`, one test by (part of) its name.
//!
//! Where a new test goes, by what it is about:
//! - the management CLI (add, edit, delete, list and their bad input): `cli`; its snapshots are
//!   in `snapshots/`; installation (completions, man page, version): `install`; the wheel:
//!   `wheel`; the Python sshpyk beside ours: `coexistence`; `sshpyk connect`: `connect`;
//! - a kernel's start, run and stop: `launcher`, `lifecycle`, `launch_errors`, `environment`;
//!   the link (cuts, reconnection, lease): `resilience`, `transport`, `long_link`, `jump`;
//!   Slurm: `slurm`; logs: `logs`; secrets and private files: `security`; Jupyter's own
//!   clients: `clients`, `browser`; the remote supervisor on its own: `supervisor`;
//! - mounts, one module per direction: a local dir on the remote (`--mount-local-on-remote`,
//!   sshfs): `local_on_remote`, its synced copy: `local_on_remote_sync`; a remote dir here
//!   (`sshpyk mount`): `remote_on_local`; cloud storage on the remote, per backend:
//!   `cloud_on_remote`; the `sshpyk mounts` command itself: `mounts_command`.
//!
//! Helpers every module may use are in `common`; the cloud stores, their `mounts add` and the
//! kernel-side steps of the cloud tests in `cloud_support`. Python a test runs stays beside the
//! binary: `tests/clients/` (Jupyter's clients), `tests/remote/` (the supervisor's own tests),
//! `cloud_support/*.py`. A test starts from a [`common::Env`]: a private temp dir standing in
//! for HOME, the Jupyter dirs and the runtime dir, and a real sshd "remote host"
//! (`Env::with_host()`), or none (`Env::local()`). A host that differs is built, each option
//! independent: `Env::remote_host()`, then `.user(TestUser::Chatty)`, `.rtt(..)`,
//! `.sshd_config("..")`, `.behind_bastion()`, `.slurm()`, `.session_env(name, ..)`, and
//! `.build()`, or `.build_to_cut()` for a test that cuts the link (`None` where it cannot):
//!
//! ```ignore
//! let env = Env::with_host(); // or Env::remote_host().user(TestUser::Chatty).build()
//! let (mut launcher, info) = env.start_kernel(&["--orphan-timeout", "4"]); // kernel "k"
//! let mut client = ready_client(&info).await;
//! env.sshpyk().args(["ps", "--json"]).assert().success(); // the binary, in the Env's dirs
//! ```
//!
//! All tests share this one process, two or more at a time: none may change its environment,
//! current directory or signal dispositions, and what it opens must be closed on exec (std's
//! files, pipes and sockets are; `common::pty` makes its terminals so), else another test's
//! children inherit it. Per-test state lives in the Env's temp dir.

mod common;

mod browser;
mod cli;
mod clients;
mod cloud_on_remote;
mod cloud_support;
mod coexistence;
mod connect;
mod environment;
mod install;
mod jump;
mod launch_errors;
mod launcher;
mod lifecycle;
mod local_on_remote;
mod local_on_remote_sync;
mod logs;
mod long_link;
mod mounts_command;
mod remote_on_local;
mod resilience;
mod security;
mod slurm;
mod supervisor;
mod transport;
mod wheel;
