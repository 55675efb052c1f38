//! What an installation brings besides the binary: shell completions, the man page, a version
//! that names its git revision.

use std::process::Command;

use assert_cmd::prelude::*;

const SSHPYK: &str = env!("CARGO_BIN_EXE_sshpyk");

/// bash loads the script, and its completion function completes subcommands and flags.
#[test]
fn bash_completions_load_and_complete() {
    let script = format!(
        r#"set -e
source <("{SSHPYK}" completions bash)
complete -p sshpyk
COMP_WORDS=(sshpyk ed); COMP_CWORD=1; _sshpyk sshpyk ed sshpyk
echo "subcommands: ${{COMPREPLY[*]}}"
COMP_WORDS=(sshpyk edit --ado); COMP_CWORD=2; _sshpyk sshpyk --ado edit
echo "flags: ${{COMPREPLY[*]}}""#
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("-F _sshpyk sshpyk"), "{text}");
    assert!(text.contains("subcommands: edit"), "{text}");
    assert!(text.contains("flags: --adopt"), "{text}");
}

#[test]
fn fish_completions_load_and_complete() {
    let script = format!(r#""{SSHPYK}" completions fish | source; complete -C "sshpyk log""#);
    let out = Command::new("fish").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("logs\t"),
        "{out:?}"
    );
}

#[test]
fn zsh_and_unknown_shells() {
    Command::new(SSHPYK)
        .args(["completions", "zsh"])
        .assert()
        .success()
        .stdout(predicates::str::starts_with("#compdef sshpyk"));
    Command::new(SSHPYK)
        .args(["completions", "tcsh"])
        .assert()
        .code(2);
}

/// `sshpyk man | man -l -` renders, with a section for every subcommand's flags.
#[test]
fn the_man_page_renders_with_man() {
    let page = Command::new(SSHPYK).arg("man").output().unwrap();
    assert!(page.status.success());
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("man (package man-db; scripts/setup installs it)");
    std::io::Write::write_all(&mut man.stdin.take().unwrap(), &page.stdout).unwrap();
    let out = man.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "man warns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for wanted in [
        "sshpyk - Run Jupyter kernels on remote machines over OpenSSH",
        "SSHPYK ADD",
        "--remote-python-prefix REMOTE_PYTHON_PREFIX",
        "SSHPYK LOGS",
        "--follow",
        "[possible values: info, debug, trace, ssh]",
        "writes a kernelspec whose kernel.json runs",
        "SSHPYK MOUNTS ADD",
        "--rclone-flag FLAG",
        "SSHPYK MOUNTS REMOVE",
        "EXIT STATUS",
        "a timeout: --launch-timeout",
    ] {
        assert!(text.contains(wanted), "no '{wanted}' in:\n{text}");
    }
}

/// Built from this checkout: the version names HEAD's revision.
#[test]
fn the_version_names_the_git_revision_of_a_checkout() {
    let root = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let expected = match git(&["rev-parse", "--show-toplevel"]) {
        Some(top) if std::path::Path::new(&top) == std::path::Path::new(root) => format!(
            "sshpyk {} (git {})\n",
            env!("CARGO_PKG_VERSION"),
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap()
        ),
        _ => format!("sshpyk {}\n", env!("CARGO_PKG_VERSION")),
    };
    Command::new(SSHPYK)
        .arg("--version")
        .assert()
        .success()
        .stdout(expected);
}
