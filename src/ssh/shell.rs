//! Running commands on the remote through the master: a POSIX sh script from any login shell
//! ([`sh_command`]), and collecting what a command printed ([`run_sh`]). The remote python,
//! after the user's init snippet, is [`super::init::python_command`].

use tokio::net::unix::pipe;

use super::Master;
use crate::bounded;
use crate::error::{Error, Result};

/// The most kept of what one remote command prints on stdout (and on stderr): probes and
/// checks print lines, not megabytes.
const COMMAND_OUTPUT: usize = 16 << 20;

/// What a remote command printed, and its exit status (`None`: killed, or the connection lost).
pub(crate) struct Output {
    pub(crate) status: Option<u32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl Output {
    pub(crate) fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs a POSIX sh `script` with `args` on the remote in a session of the master, and collects
/// its output.
pub(crate) async fn run_sh(master: &Master, script: &str, args: &[&str]) -> Result<Output> {
    run_command(master, &sh_command(script, args)).await
}

/// Runs a remote command line in a session of the master, and collects its output.
pub(crate) async fn run_command(master: &Master, command: &str) -> Result<Output> {
    let (stdout, stdout_remote) = crate::ssh::pipe()?;
    let (stderr, stderr_remote) = crate::ssh::pipe()?;
    let stdin = std::fs::File::open("/dev/null")
        .map_err(crate::ssh::setup_error)?
        .into();
    let mut channel = master
        .open_session(command, stdin, stdout_remote, stderr_remote)
        .await?;
    let stdout = pipe::Receiver::from_owned_fd(stdout).map_err(crate::ssh::setup_error)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(crate::ssh::setup_error)?;
    let (out, err) = tokio::join!(
        bounded::read_to_end(stdout, COMMAND_OUTPUT),
        bounded::read_to_end(stderr, COMMAND_OUTPUT)
    );
    let read = || Error::io("cannot read a remote command's output");
    let (out, err) = (out.map_err(read())?, err.map_err(read())?);
    Ok(Output {
        status: channel.exit_status().await.ok().flatten(),
        stdout: out,
        stderr: err,
    })
}

/// A remote command line running a POSIX sh `script` with `args` as `$1...`, whatever the
/// remote login shell. sshd hands the line to the user's login shell, and csh, tcsh and fish
/// read quotes differently from sh (no newlines inside quotes in csh, `\\` and `\'` inside single
/// quotes in fish, `!` in csh): so the real command is sent as plain single-quoted words that
/// every one of them passes on untouched, with each byte any of them treats specially written
/// as an octal escape, and decoded by sh's own `printf %b`.
pub(crate) fn sh_command(script: &str, args: &[&str]) -> String {
    let mut line = format!("exec sh -c {} sshpyk", shell_quote(script));
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    any_shell_command(&line)
}

/// Decodes and runs the words that follow (`$1...`) in sh: `printf %b` repeats its format for
/// each word, so they concatenate.
const DECODE_AND_RUN: &str = r#"exec sh -c 'eval "$(printf %b "$@")"' sshpyk"#;

/// csh refuses words longer than about 8 KiB ("Word too long"); a word never splits an escape.
const MAX_WORD: usize = 1000;

/// The command line that runs the POSIX sh command `line` from any login shell (see
/// [`sh_command`]).
fn any_shell_command(line: &str) -> String {
    let mut words = vec![String::new()];
    for byte in line.bytes() {
        let plain = (b' '..=b'~').contains(&byte) && !matches!(byte, b'\'' | b'\\' | b'!');
        let piece = if plain {
            char::from(byte).to_string()
        } else {
            format!("\\0{byte:03o}")
        };
        if words
            .last()
            .is_some_and(|w| w.len() + piece.len() > MAX_WORD)
        {
            words.push(String::new());
        }
        words.last_mut().expect("never empty").push_str(&piece);
    }
    let mut command = DECODE_AND_RUN.to_string();
    for word in words {
        command.push_str(" '");
        command.push_str(&word);
        command.push('\'');
    }
    command
}

/// Quotes one word for a POSIX shell.
pub(crate) fn shell_quote(word: &str) -> String {
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

    /// What sshd does with a command: `$SHELL -c LINE`. Every login shell on this machine must
    /// run the same script with the same arguments (scripts/setup installs bsd-csh, tcsh and fish).
    #[test]
    fn the_command_line_survives_every_login_shell() {
        let script =
            "printf '[%s]' \"$@\"; echo; x='a\\\\b!c'; printf '%s %s\\n' \"$x\" \"${HOME+set}\"\n"
                .repeat(150);
        let args = ["it's", "~/a b", "é\\n!$x", "", "%s%b\\0101"];
        let line = sh_command(&script, &args);
        let run = |shell: &str| {
            let out = std::process::Command::new(shell)
                .arg("-c")
                .arg(&line)
                .output()
                .unwrap_or_else(|e| panic!("{shell}: {e}"));
            assert!(out.status.success(), "{shell}: {out:?}");
            assert!(out.stderr.is_empty(), "{shell}: {out:?}");
            out.stdout
        };
        let expected = "[it's][~/a b][é\\n!$x][][%s%b\\0101]\na\\\\b!c set\n".repeat(150);
        for shell in ["sh", "bash", "dash", "bsd-csh", "tcsh", "fish"] {
            assert_eq!(String::from_utf8(run(shell)).unwrap(), expected, "{shell}");
        }
    }
}
