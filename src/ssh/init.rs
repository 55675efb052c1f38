//! The user's init snippet (`--remote-init`): shell code such as `module load cuda/12` or
//! `conda activate ml`, run before the remote python in a *login* shell of the user's own shell
//! (`$SHELL -l -c`), so that /etc/profile and /etc/profile.d are read and Lmod's `module`
//! exists; sshd's `$SHELL -c` alone is not a login shell. The python is then started by that
//! same shell, so it inherits whatever the snippet set up.
//!
//! The snippet runs as is, in the user's shell syntax (a POSIX-like shell: sh, bash, dash, ksh,
//! zsh), with stdin from /dev/null (the supervisor's stdin is not for it) and its stderr joined
//! to stdout. Its output comes before the supervisor's marker line, so it never reaches the
//! frames; lines between `sshpyk-init-begin` and its end are kept to explain a failure.
//!
//! Every start of the remote python goes through [`python_command`], snippet or not.

use std::collections::VecDeque;

use super::shell::sh_command;
use crate::error::Error;

/// Runs the remote python with the given arguments, from the remote login shell's command line:
/// nothing secret goes there, only the interpreter path and code. (The supervisor cannot be piped
/// to `sh -s` instead: dash reads its script in blocks, so it would swallow the supervisor and
/// key meant for python, and handing them over costs one more round trip.)
/// A python without a `/` is a command name, looked up on the PATH (after the init snippet).
const RUN_PYTHON: &str = include_str!("run_python.sh");

/// The remote command line that runs `python args...`, after the user's init snippet (in a
/// login shell, see [`command`]) when there is one.
pub(crate) fn python_command(python: &str, args: &[&str], init: Option<&str>) -> String {
    let mut words = vec![python];
    words.extend_from_slice(args);
    match init {
        None => sh_command(RUN_PYTHON, &words),
        Some(snippet) => command(snippet, RUN_PYTHON, &words),
    }
}

/// The wrapper around the snippet, in the user's shell.
const WRAPPER: &str = include_str!("init.sh");
/// Execs the user's shell as a login shell running the wrapper (`$1`) with the rest as `$0...`.
const LOGIN_SHELL: &str = r#"w=$1; shift; exec "${SHELL:-/bin/sh}" -l -c "$w" sshpyk "$@""#;
const BEGIN: &str = "sshpyk-init-begin";
const OK: &str = "sshpyk-init-ok";
const FAILED: &str = "sshpyk-init-failed ";
/// Output lines of a failed snippet kept for the error, and shown in it.
const KEPT_LINES: usize = 20;
const SHOWN_LINES: usize = 5;

/// The remote command line: a login shell that runs `snippet`, then the POSIX sh `then` with
/// `args` as `$1...` (it execs the python).
pub(crate) fn command(snippet: &str, then: &str, args: &[&str]) -> String {
    let script = format!("{}{then}", WRAPPER.replace("@SNIPPET@", snippet));
    let mut words = vec![script.as_str()];
    words.extend_from_slice(args);
    sh_command(LOGIN_SHELL, &words)
}

/// How a snippet went, from the lines the remote printed before the supervisor's marker.
#[derive(Debug, Default)]
pub(crate) struct InitWatch {
    began: bool,
    done: bool,
    tail: VecDeque<String>,
}

/// The snippet failed: its exit status (`None` when the shell ended without one) and last lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InitFailure {
    pub(crate) status: Option<u32>,
    pub(crate) tail: Vec<String>,
}

impl InitWatch {
    /// Takes one output line (without its newline); `Some` when it says the snippet failed.
    pub(crate) fn line(&mut self, line: &str) -> Option<InitFailure> {
        if line == BEGIN {
            self.began = true;
        } else if line == OK {
            self.done = true;
        } else if let Some(status) = line.strip_prefix(FAILED).filter(|_| self.began) {
            self.done = true;
            return Some(self.failure(status.trim().parse().ok()));
        } else if self.began && !self.done {
            if self.tail.len() == KEPT_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.to_string());
        }
        None
    }

    /// The output ended with `status`: a failure when the snippet ran and never finished (it
    /// called `exit`, or the shell stopped at a syntax error).
    pub(crate) fn ended(&mut self, status: Option<u32>) -> Option<InitFailure> {
        (self.began && !self.done).then(|| self.failure(status))
    }

    fn failure(&self, status: Option<u32>) -> InitFailure {
        InitFailure {
            status,
            tail: self.tail.iter().cloned().collect(),
        }
    }
}

impl InitFailure {
    /// One line: what failed, how, its last output lines, and the fix.
    pub(crate) fn describe(&self) -> String {
        let status = match self.status {
            Some(code) => format!("exit status {code}"),
            None => "no exit status".to_string(),
        };
        let shown: Vec<&str> = self
            .tail
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        let shown = &shown[shown.len().saturating_sub(SHOWN_LINES)..];
        let output = if shown.is_empty() {
            "no output".to_string()
        } else {
            format!("last output: {}", shown.join(" | "))
        };
        format!("the remote init snippet failed ({status}; {output})")
    }

    pub(crate) fn error(&self, alias: &str) -> Error {
        Error::Remote(format!(
            "{} on '{alias}'; fix it with `sshpyk edit --remote-init SNIPPET`",
            self.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the remote command line as the remote login shell would (`sh -c LINE`), with
    /// `shell` as the user's shell, and watches its output.
    fn run(
        shell: &str,
        snippet: &str,
        then: &str,
        args: &[&str],
    ) -> (String, InitWatch, Option<InitFailure>) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command(snippet, then, args))
            .env("SHELL", shell)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut watch = InitWatch::default();
        let mut failure = None;
        for line in stdout.lines() {
            failure = failure.or(watch.line(line));
        }
        let failure = failure.or_else(|| watch.ended(out.status.code().map(|c| c as u32)));
        (stdout, watch, failure)
    }

    #[test]
    fn what_the_snippet_sets_reaches_the_command_after_it() {
        for shell in ["/bin/sh", "/bin/bash"] {
            let (out, watch, failure) = run(
                shell,
                "SSHPYK_T='a \"b\" c'; export SSHPYK_T\necho visible; echo on-stderr >&2",
                r#"printf 'got:%s:%s\n' "$SSHPYK_T" "$1""#,
                &["it's"],
            );
            assert_eq!(failure, None, "{shell}: {out}");
            assert!(watch.done, "{out}");
            assert!(out.ends_with("got:a \"b\" c:it's\n"), "{shell}: {out}");
            assert!(out.contains("visible\non-stderr\n"), "{shell}: {out}");
        }
    }

    #[test]
    fn a_failing_snippet_reports_its_status_and_last_lines() {
        let (out, _, failure) = run("/bin/sh", "echo one\necho two >&2\nfalse", "echo ran", &[]);
        let failure = failure.unwrap_or_else(|| panic!("{out}"));
        assert_eq!(failure.status, Some(1));
        assert_eq!(failure.tail, ["one", "two"]);
        assert!(!out.contains("ran"));
        let text = failure.describe();
        assert!(
            text.contains("exit status 1; last output: one | two"),
            "{text}"
        );

        // `exit` ends the shell itself: the status is the shell's.
        let (_, _, failure) = run("/bin/bash", "echo bye; exit 7", "echo ran", &[]);
        assert_eq!(
            failure.map(|f| (f.status, f.tail)),
            Some((Some(7), vec!["bye".into()]))
        );
    }

    #[test]
    fn the_snippet_cannot_read_the_sessions_stdin() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command("read line; echo \"read:$line\"", "cat", &[]))
            .env("SHELL", "/bin/sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"for python\n")?;
                child.wait_with_output()
            })
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("read:\n"), "{text}");
        assert!(text.ends_with("for python\n"), "{text}");
    }
}
