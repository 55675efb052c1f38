//! `list`'s human output: the kernels by group with their rows, then active `sshpyk mount`s.

use std::io::IsTerminal;

use super::{KernelReport, Status};
use crate::mounts::remote_on_local::ActiveMount;

impl Status {
    fn mark(self, color: bool) -> String {
        let (mark, code) = match self {
            Status::Ok => ("(v)", "32"),
            Status::Error => ("(x)", "31"),
            Status::Warning => ("(!)", "33"),
            Status::Info => ("(i)", "34"),
        };
        if color {
            format!("\x1b[{code}m{mark}\x1b[0m")
        } else {
            mark.to_string()
        }
    }
}

pub(super) fn kernels(reports: &[KernelReport], show_remote: bool, show_local: bool) {
    let color = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut out = String::new();
    type Member = fn(&KernelReport) -> bool;
    let groups: [(&str, Member, bool); 3] = [
        ("sshpyk kernels", |r| r.sshpyk, show_remote),
        (
            "local kernels",
            |r| !r.sshpyk && !r.python_sshpyk,
            show_local,
        ),
        ("Python sshpyk kernels", |r| r.python_sshpyk, show_remote),
    ];
    for (title, member, shown) in groups {
        let group: Vec<&KernelReport> = reports.iter().filter(|r| member(r)).collect();
        // The Python sshpyk's group only when there is one: most users never had it.
        if !shown || (group.is_empty() && title.starts_with("Python")) {
            continue;
        }
        out.push_str(title);
        out.push('\n');
        if group.is_empty() {
            out.push_str("  (none)\n");
        }
        for r in group {
            kernel(&mut out, r, color);
        }
    }
    print!("{out}");
}

fn kernel(out: &mut String, r: &KernelReport, color: bool) {
    out.push_str(&format!(
        "  {}  \"{}\"  {}  {}\n",
        r.name,
        r.display_name,
        r.language,
        r.dir.display()
    ));
    if let Some(s) = &r.settings {
        out.push_str(&format!(
            "    ssh {} → {} kernel '{}'\n",
            s.ssh_host_alias, s.remote_python, s.remote_kernel_name
        ));
    }
    for c in &r.checks {
        out.push_str(&format!(
            "    {} {}: {}\n",
            c.status.mark(color),
            c.check,
            c.message
        ));
    }
}

/// Active `sshpyk mount`s, when there are any.
pub(super) fn mounts(mounts: &[ActiveMount]) {
    if mounts.is_empty() {
        return;
    }
    println!("sshpyk mounts (remote directories mounted here)");
    for m in mounts {
        println!("  {}", m.describe());
    }
}
