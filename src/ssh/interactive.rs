//! Opening a host's ControlMaster by hand (`sshpyk connect`): the one place where ssh may prompt
//! (password, OTP, keyboard-interactive, FIDO touch). Every other ssh call of sshpyk runs with
//! `BatchMode` and rides the master opened here until its `ControlPersist` ends it.

use std::path::Path;
use std::process::Stdio;

use super::Master;
use crate::error::{Error, Result};
use crate::ssh::shell::shell_quote;

/// The command that opens `alias`'s connection interactively, as the user types it: named in
/// every error that authentication needing a human causes (launch, `list`, mounts). The config
/// file and ssh client appear only when they are not the defaults.
pub(crate) fn connect_hint(alias: &str, ssh_config: &Path, ssh: &str) -> String {
    let mut hint = format!("sshpyk connect {}", word(alias));
    let default_config = dirs::home_dir().map(|h| h.join(".ssh/config"));
    if default_config.as_deref() != Some(ssh_config) {
        hint.push_str(&format!(
            " --ssh-config {}",
            word(&ssh_config.to_string_lossy())
        ));
    }
    if ssh != "ssh" {
        hint.push_str(&format!(" --ssh {}", word(ssh)));
    }
    hint
}

/// A word for a POSIX shell, quoted only when it needs it.
fn word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@:%+=,".contains(c));
    if plain {
        text.to_string()
    } else {
        shell_quote(text)
    }
}

impl Master {
    /// Opens the master with ssh talking to the user's terminal, and returns once it is up (ssh
    /// backgrounds itself after authentication). Nothing to do when one is up already: `false`.
    pub(crate) async fn open_interactively(&self) -> Result<bool> {
        self.check_owner()?;
        if self.is_up().await {
            return Ok(false);
        }
        if !self.remove_stale_socket()? {
            return Err(Error::Ssh(format!(
                "the ControlMaster at {} does not answer; close it with `ssh -O exit {}` and try again",
                self.control_socket().display(),
                self.alias()
            )));
        }
        let mut cmd = self.open_command(true);
        cmd.args(["-N", "-f"]).arg(self.alias());
        // The user's terminal, and no time limit: a human is answering.
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let status = cmd
            .status()
            .await
            .map_err(|e| super::config::spawn_error(self.ssh_program(), e))?;
        if !status.success() {
            return Err(Error::Ssh(format!(
                "ssh could not connect to '{}' ({status}); see its messages above",
                self.alias()
            )));
        }
        if !self.is_up().await {
            return Err(Error::Ssh(format!(
                "ssh connected to '{}' but no ControlMaster answers at {}; check that the ControlPath directory is writable",
                self.alias(),
                self.control_socket().display()
            )));
        }
        Ok(true)
    }

    /// Closes the master (`ssh -O exit`); `false` when none was up.
    pub(crate) async fn close(&self) -> Result<bool> {
        if !self.is_up().await {
            return Ok(false);
        }
        let status = self
            .command()
            .args(["-O", "exit"])
            .arg(self.alias())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| super::config::spawn_error(self.ssh_program(), e))?;
        if status.status.success() {
            Ok(true)
        } else {
            Err(Error::Ssh(format!(
                "could not close the connection to '{}': {}",
                self.alias(),
                super::config::last_message(&String::from_utf8_lossy(&status.stderr))
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_names_only_what_differs_from_the_defaults() {
        let home = dirs::home_dir().unwrap();
        assert_eq!(
            connect_hint("gpu", &home.join(".ssh/config"), "ssh"),
            "sshpyk connect gpu"
        );
        assert_eq!(
            connect_hint("gpu", Path::new("/etc/my config"), "/opt/ssh"),
            "sshpyk connect gpu --ssh-config '/etc/my config' --ssh /opt/ssh"
        );
    }
}
