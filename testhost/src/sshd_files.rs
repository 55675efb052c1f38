//! What a test sshd needs on disk: its keys and the user's (ssh-keygen), the text of its
//! sshd_config, and a root sshd's privilege separation directory. Starting, waiting for and
//! stopping sshd is the host's (`host.rs`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::unistd::geteuid;

use crate::registry::MARKER_VAR;

pub fn sshd_config(address: &str, port: u16, dir: &Path, extra: &str) -> String {
    // sshd keeps the first value of an option, so the extra options go first; but a `Match`
    // block runs to the end of the file, so it must come after every global option.
    let (extra_options, extra_matches) = split_at_match(extra);
    // sshd's session and start-up limits keep their stock values (10 sessions per connection,
    // 10:30:100 unauthenticated connections), as on the hosts users have: tests must pass
    // within them.
    format!(
        "{extra_options}\
         Port {port}\n\
         ListenAddress {address}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         PidFile none\n\
         PermitRootLogin prohibit-password\n\
         StrictModes no\n\
         UsePAM no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitUserEnvironment {MARKER_VAR}\n\
         AllowTcpForwarding yes\n\
         AllowStreamLocalForwarding yes\n\
         GatewayPorts no\n\
         X11Forwarding no\n\
         Subsystem sftp internal-sftp\n\
         LogLevel VERBOSE\n\
         {extra_matches}",
        host_key = quoted(&dir.join("ssh_host_ed25519_key")),
        authorized_keys = quoted(&dir.join("authorized_keys")),
    )
}

/// Splits sshd_config text before its first `Match` line.
fn split_at_match(text: &str) -> (&str, &str) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let keyword = line.split_whitespace().next().unwrap_or("");
        if keyword.eq_ignore_ascii_case("match") {
            return text.split_at(offset);
        }
        offset += line.len();
    }
    (text, "")
}

/// A path as an ssh/sshd configuration argument.
pub fn quoted(path: &Path) -> String {
    let path = path.display().to_string();
    if path.contains(char::is_whitespace) {
        format!("\"{path}\"")
    } else {
        path
    }
}

pub fn ensure_privsep_dir() -> Result<()> {
    let dir = Path::new("/run/sshd");
    // Only a root sshd uses (and insists on) its privilege separation directory.
    if dir.exists() || !geteuid().is_root() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .or_else(|e| {
            // A parallel start may have created it meanwhile.
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .context("creating sshd's privilege separation directory /run/sshd")
}

pub fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-N",
            "",
            "-t",
            "ed25519",
            "-C",
            "sshpyk-testhost",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -f {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The `type base64` part of an OpenSSH public key file (without the comment).
pub fn read_public_key(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let fields: Vec<&str> = text.split_whitespace().take(2).collect();
    if fields.len() != 2 {
        bail!("{} is not an OpenSSH public key", path.display());
    }
    Ok(fields.join(" "))
}

pub fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_options_precede_defaults_and_match_blocks_follow_them() {
        let extra = "ClientAliveInterval 7\nmatch User nobody\n    ForceCommand true\n";
        let config = sshd_config("127.0.0.1", 2222, Path::new("/d"), extra);
        let option = config.find("ClientAliveInterval 7").unwrap();
        let port = config.find("Port 2222").unwrap();
        let block = config
            .find("match User nobody\n    ForceCommand true\n")
            .unwrap();
        let last_default = config.find("LogLevel VERBOSE").unwrap();
        assert!(option < port && last_default < block, "{config}");
    }

    #[test]
    fn split_without_match_keeps_everything_first() {
        assert_eq!(split_at_match("A b\nC d\n"), ("A b\nC d\n", ""));
        assert_eq!(split_at_match(""), ("", ""));
    }

    #[test]
    fn paths_with_spaces_are_quoted() {
        assert_eq!(quoted(Path::new("/a b/c")), "\"/a b/c\"");
        assert_eq!(quoted(Path::new("/a/c")), "/a/c");
    }
}
