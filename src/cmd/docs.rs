//! `sshpyk completions SHELL` and `sshpyk man`: generated from the clap definitions, so they
//! never drift from the real flags.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result};

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sshpyk", &mut out);
    write_stdout(&out)
}

/// Exit codes, as README.rst's "Exit codes" table gives them (see `Error::exit_code`).
const EXIT_STATUS: [(&str, &str); 9] = [
    ("0", "success (launch: the remote kernel exited normally, otherwise its status or 128+signal; mount: the subshell's status)"),
    ("2", "command-line usage error"),
    ("3", "invalid input: flags, kernel names, ssh config or alias, connection file, unknown kernel, a mount point that is not empty, already mounted or not a mount point (--umount)"),
    ("4", "the ssh connection failed (refused, authentication, host key, ssh missing)"),
    ("5", "the remote is not usable: python, jupyter_client, kernelspec, runtime dir"),
    ("6", "a timeout: --launch-timeout or the connection budget ran out"),
    ("7", "a local resource is unavailable: a port in use, a directory not writable, sshfs or FUSE"),
    ("8", "the remote kernel is gone (ended while the connection was down)"),
    ("9", "list: a checked kernel has an error (a row marked (x)); the listing is complete"),
];

/// One page: clap_mangen's for `sshpyk`, then a section per subcommand (and per subcommand of
/// `mounts`) with its arguments (clap_mangen would refer to separate `sshpyk-add(1)` pages that
/// nobody installs), then EXIT STATUS.
pub(crate) fn man() -> Result<()> {
    let command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .map_err(Error::io("cannot render the man page"))?;
    let mut text = String::from_utf8_lossy(&page)
        .replace("sshpyk\\-", "sshpyk ")
        .replace("(1)\n", "\n");
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        text.push_str(&subcommand_section(sub, "sshpyk"));
    }
    text.push_str(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in EXIT_STATUS {
        text.push_str(&format!(".TP\n{code}\n{}\n", escape(meaning)));
    }
    write_stdout(text.as_bytes())
}

/// `sub`'s section, then its own subcommands' (`sshpyk mounts add`...).
fn subcommand_section(sub: &clap::Command, parent: &str) -> String {
    let name = format!("{parent} {}", sub.get_name());
    let mut roff = format!(".SH \"{}\"\n", name.to_uppercase());
    let usage = sub.clone().bin_name(&name).render_usage();
    roff.push_str(&format!(
        ".B {}\n.PP\n",
        escape(&usage.to_string().replace("Usage: ", ""))
    ));
    if let Some(about) = sub.get_long_about().or(sub.get_about()) {
        roff.push_str(&format!("{}\n", escape(&about.to_string())));
    }
    for arg in sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help")
    {
        let mut names: Vec<String> = Vec::new();
        if let Some(short) = arg.get_short() {
            names.push(format!("\\fB\\-{short}\\fR"));
        }
        if let Some(long) = arg.get_long() {
            names.push(format!("\\fB\\-\\-{}\\fR", escape(long)));
        }
        let value = arg
            .get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        let takes_value = arg.get_action().takes_values();
        let head = match (names.is_empty(), takes_value) {
            (true, _) => format!("\\fI{}\\fR", escape(&value)),
            (false, true) => format!("{} \\fI{}\\fR", names.join(", "), escape(&value)),
            (false, false) => names.join(", "),
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|_| takes_value)
            .map(|v| v.get_name().to_string())
            .collect();
        let values = if values.is_empty() {
            String::new()
        } else {
            format!(" [possible values: {}]", values.join(", "))
        };
        roff.push_str(&format!(
            ".TP\n{head}\n{}{}\n",
            escape(&help),
            escape(&values)
        ));
    }
    for nested in sub.get_subcommands().filter(|s| s.get_name() != "help") {
        roff.push_str(&subcommand_section(nested, &name));
    }
    roff
}

/// Text safe as roff: backslashes escaped, no line starting with a control character.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|line| match line.chars().next() {
            Some('.' | '\'') => format!("\\&{line}"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::io("cannot write to stdout"))
}
