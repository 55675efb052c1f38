//! How many files and directories the mounts of one launcher may hold open together, so that
//! a remote holding many open never starves the rest of the launcher of descriptors.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Descriptors kept for the rest of the launcher when every mount's handles are open: client
/// connections, ssh clients, pipes, the files a request opens for a moment.
const RESERVED_FDS: u64 = 256;

/// The open handles of every mount of the launcher together, kept below its descriptor limit, so
/// that a remote holding many files open never starves the rest (accepting a client, starting
/// ssh). Beyond it, opening answers with an SFTP error.
pub(crate) struct HandleBudget {
    left: AtomicUsize,
}

impl HandleBudget {
    pub(crate) fn new(handles: usize) -> Arc<Self> {
        Arc::new(HandleBudget {
            left: AtomicUsize::new(handles),
        })
    }

    /// The budget every mount shares; the first call raises the descriptor limit to its most.
    pub(crate) fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<HandleBudget>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let limit = raise_fd_limit();
                let handles = limit.saturating_sub(RESERVED_FDS);
                tracing::debug!(
                    "descriptor limit {limit}: up to {handles} open files across mounts"
                );
                HandleBudget::new(usize::try_from(handles).unwrap_or(usize::MAX))
            })
            .clone()
    }

    /// One handle's share, or `None` when the budget is spent.
    pub(crate) fn take(self: &Arc<Self>) -> Option<HandlePermit> {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| HandlePermit(self.clone()))
    }
}

/// One handle's share of the budget, given back when the handle goes.
pub(crate) struct HandlePermit(Arc<HandleBudget>);

impl Drop for HandlePermit {
    fn drop(&mut self) {
        self.0.left.fetch_add(1, Ordering::SeqCst);
    }
}

/// Raises this process's soft limit on open descriptors to the hard limit (the default soft
/// limit, often 1024, is far below what the mounts may need); returns the limit in force.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::debug!(
            "cannot raise the descriptor limit to {}: {}",
            limit.rlim_max,
            io::Error::last_os_error()
        );
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let hard = limit.rlim_max;
        if hard > 512 {
            limit.rlim_cur = 512;
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        }
        assert_eq!(raise_fd_limit(), hard);
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(limit.rlim_cur, hard);
    }
}
