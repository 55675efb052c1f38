//! The remote side of a kernel: one ssh session carries the supervisor (a Python script embedded
//! here), the session key, requests, reports and every client connection to the kernel
//! ([`protocol`]), from a single round trip to start.

use crate::error::Result;
use crate::ssh::Master;

mod link;
pub mod probe;
pub mod protocol;
mod session;

pub use link::{Link, Stream};
pub use protocol::{EndReason, Endpoint, Exit, InterruptMode, Ready};
pub use session::{Event, Session, StartRequest};

/// Runs the remote python with the given arguments, from the remote login shell's command line:
/// nothing secret goes there, only the interpreter path and code. (The supervisor cannot be piped
/// to `sh -s` instead: dash reads its script in blocks, so it would swallow the supervisor and
/// key meant for python, and handing them over costs one more round trip.)
const RUN_PYTHON: &str = r#"py=$1; shift
case $py in "~/"*) py=$HOME/${py#"~/"};; esac
if [ ! -x "$py" ]; then echo sshpyk-no-python; exit 0; fi
exec "$py" "$@""#;

/// The remote command line that runs `python args...`.
fn python_command(python: &str, args: &[&str]) -> String {
    let mut words = vec![python];
    words.extend_from_slice(args);
    sh_command(RUN_PYTHON, &words)
}

/// Runs a POSIX sh `script` with `args` on the remote over the master, and collects its output.
pub async fn run_sh(master: &Master, script: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = master.command();
    cmd.arg("-T")
        .arg(master.alias())
        .arg(sh_command(script, args));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.output()
        .await
        .map_err(|e| crate::ssh::config::spawn_error("ssh", e))
}

/// A remote command line running a POSIX sh `script` with `args` as `$1...`, whatever the
/// remote login shell: every word quoted.
pub fn sh_command(script: &str, args: &[&str]) -> String {
    let mut line = format!("exec sh -c {} sshpyk", shell_quote(script));
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    line
}

/// Quotes one word for a POSIX shell (the remote login shell parses the command line).
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r#"'\''"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("a 'b' $HOME \"c\"")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "a 'b' $HOME \"c\"");
    }
}
