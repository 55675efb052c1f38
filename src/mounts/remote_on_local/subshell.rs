//! The user's `$SHELL`, run while the mount lives, with a prompt that names the mount where the
//! shell allows it (bash through a generated rcfile, zsh through a generated ZDOTDIR) and
//! `SSHPYK_MOUNT` in its environment for every shell.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::Signals;
use crate::error::{Error, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs the shell until it exits and returns its status (128+signal when killed). SIGHUP (the
/// terminal closed) and SIGTERM end it with SIGHUP, which interactive shells obey; SIGINT and
/// SIGQUIT are the shell's business, not ours.
pub(crate) async fn run(
    shell: &Path,
    label: &str,
    mountpoint: &Path,
    scratch: &Path,
    signals: &mut Signals,
) -> Result<i32> {
    let mut cmd = tokio::process::Command::new(shell);
    cmd.env("SSHPYK_MOUNT", mountpoint)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let prompt = format!("(sshpyk: {}) ", sanitize(label));
    match shell.file_name().and_then(|n| n.to_str()) {
        Some("bash") => {
            let rcfile = scratch.join("bashrc");
            std::fs::write(&rcfile, bash_rc(&prompt))
                .map_err(Error::io(format!("cannot write {}", rcfile.display())))?;
            cmd.arg("--rcfile").arg(&rcfile).arg("-i");
        }
        Some("zsh") => {
            for (file, text) in zsh_files(&prompt) {
                let path = scratch.join(file);
                std::fs::write(&path, text)
                    .map_err(Error::io(format!("cannot write {}", path.display())))?;
            }
            let user_zdotdir = std::env::var_os("ZDOTDIR")
                .or_else(|| std::env::var_os("HOME"))
                .unwrap_or_default();
            cmd.env("SSHPYK_USER_ZDOTDIR", user_zdotdir)
                .env("ZDOTDIR", scratch)
                .arg("-i");
        }
        _ => {}
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::Local(format!(
            "cannot start your shell {} ({e}); set SHELL to a shell that exists, or use --foreground",
            shell.display()
        ))
    })?;
    let pid = Pid::from_raw(child.id().expect("a running child has a pid") as i32);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = signals.interrupt.recv() => {}
            _ = signals.quit.recv() => {}
            _ = signals.hangup.recv() => break end(&mut child, pid).await,
            _ = signals.terminate.recv() => break end(&mut child, pid).await,
        }
    };
    let status = status.map_err(Error::io("waiting for your shell"))?;
    Ok(exit_code(status))
}

/// Hangs the shell up (its own process group too: an interactive shell with job control leads
/// one), then kills it if it lingers.
async fn end(
    child: &mut tokio::process::Child,
    pid: Pid,
) -> std::io::Result<std::process::ExitStatus> {
    let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGHUP);
    let _ = kill(pid, Signal::SIGHUP);
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            child.start_kill()?;
            child.wait().await
        }
    }
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Prompt text that no shell expands: backslashes, `$`, backquotes and quotes are dropped.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .filter(|c| !matches!(c, '\\' | '$' | '`' | '\'' | '"' | '%' | '!'))
        .collect()
}

/// Reads the user's own ~/.bashrc, then puts the mount in front of the prompt.
fn bash_rc(prompt: &str) -> String {
    format!(
        "# Written by sshpyk mount for this subshell; removed when it exits.\n\
         if [ -f ~/.bashrc ]; then . ~/.bashrc; fi\n\
         PS1='{prompt}'\"$PS1\"\n"
    )
}

/// zsh reads every start-up file from `$ZDOTDIR`: ours read the user's, then set the prompt.
fn zsh_files(prompt: &str) -> [(&'static str, String); 2] {
    let user = "${SSHPYK_USER_ZDOTDIR:-$HOME}";
    [
        (
            ".zshenv",
            format!("[ -f \"{user}/.zshenv\" ] && . \"{user}/.zshenv\"\n"),
        ),
        (
            ".zshrc",
            format!(
                "ZDOTDIR=\"{user}\"\n\
                 [ -f \"$ZDOTDIR/.zshrc\" ] && . \"$ZDOTDIR/.zshrc\"\n\
                 PS1='{prompt}'\"$PS1\"\n"
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_cannot_run_code() {
        assert_eq!(sanitize("gpu:/$(rm -rf)`x`'\"\\"), "gpu:/(rm -rf)x");
    }

    #[test]
    fn bash_reads_the_users_rc_first() {
        let rc = bash_rc("(sshpyk: gpu:/data) ");
        let user = rc.find(". ~/.bashrc").unwrap();
        let ours = rc.find("PS1='(sshpyk: gpu:/data) '\"$PS1\"").unwrap();
        assert!(user < ours);
    }
}
