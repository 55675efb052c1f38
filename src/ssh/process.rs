//! Child processes that must never outlive the launcher.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Ties a child to this process: it lives in its own process group, so that the SIGINT Jupyter
/// sends to our group for an interrupt does not end our ssh clients, and on Linux it gets
/// SIGTERM when we die, even by SIGKILL.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits, so children must be spawned from
/// a thread that lives as long as the process: the launcher runs a current-thread runtime.
pub fn tie_to_parent(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = Pid::this();
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // The parent may have died before prctl took effect.
                if nix::unistd::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
}
