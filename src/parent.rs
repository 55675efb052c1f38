//! The process that started the kernel. jupyter_client names it in `JPY_PARENT_PID` (unless the
//! kernel was started `independent=True`); like ipykernel, the launcher stops its kernel when
//! that process is gone, so a client that dies without shutting its kernel down leaves nothing
//! running. Without the variable the launcher stays: independent kernels outlive their starter.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub(crate) struct Parent {
    pid: Option<Pid>,
}

impl Parent {
    pub(crate) fn from_env() -> Self {
        let pid = std::env::var("JPY_PARENT_PID")
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 1)
            .map(Pid::from_raw);
        Parent { pid }
    }

    pub(crate) fn pid(&self) -> Option<i32> {
        self.pid.map(Pid::as_raw)
    }

    /// Whether the named parent has exited (a zombie counts as exited).
    pub(crate) fn is_gone(&self) -> bool {
        let Some(pid) = self.pid else {
            return false;
        };
        if kill(pid, None) == Err(Errno::ESRCH) {
            return true;
        }
        is_zombie(pid)
    }
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: Pid) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_parent_is_not_gone_and_an_exited_one_is() {
        let live = Parent {
            pid: Some(Pid::this()),
        };
        assert!(!live.is_gone());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Exited but not yet reaped: a zombie.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(Parent { pid: Some(pid) }.is_gone());
        child.wait().unwrap();
        assert!(Parent { pid: Some(pid) }.is_gone());
        assert!(!Parent { pid: None }.is_gone());
    }
}
