//! The supervisor and its transport: one ssh session per kernel carries the supervisor (a
//! Python script, `supervisor.py` and the files it loads, sent on the session's stdin), the
//! session key, requests, reports and every client connection to the kernel, in frames
//! ([`protocol`]) over streams that outlive a dropped connection ([`Link`]). Starting takes a
//! single round trip; a new session reattaches to the running supervisor.

mod link;
mod output;
pub(crate) mod protocol;
mod session;

pub(crate) use link::Link;
pub(crate) use protocol::{EndReason, Exit, InterruptMode, Ready};
pub(crate) use session::{SessionEvent, StartRequest, SupervisorSession};
