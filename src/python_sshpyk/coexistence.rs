//! Living beside the Python sshpyk (PyPI `sshpyk`): our wheel (`sshpyk-rs`) and its wheel both
//! install a `sshpyk` command into the environment's `bin/`, and pip replaces one with the other
//! without a word (a wheel runs no code when installed). So each side is noticed where it shows:
//! this binary says when the Python sshpyk is installed in its environment too, and `list`
//! says when a kernel's launcher has been replaced by the Python sshpyk's command.

use std::path::{Path, PathBuf};

/// The Python sshpyk's version when it is installed in the environment this binary is in
/// (`<prefix>/bin/sshpyk` beside `<prefix>/lib/python*/site-packages/sshpyk-*.dist-info`).
pub(crate) fn python_sshpyk_beside(exe: &Path) -> Option<(PathBuf, String)> {
    let prefix = exe.parent()?.parent()?;
    let lib = std::fs::read_dir(prefix.join("lib")).ok()?;
    lib.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .find_map(|python| {
            let site = std::fs::read_dir(python.path().join("site-packages")).ok()?;
            site.flatten().find_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version = name.strip_prefix("sshpyk-")?.strip_suffix(".dist-info")?;
                Some((prefix.to_owned(), version.to_string()))
            })
        })
}

/// Says (on stderr) that the Python sshpyk shares this binary's environment, and what that means.
pub(crate) fn notice_python_sshpyk() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if let Some((prefix, version)) = python_sshpyk_beside(&exe) {
        tracing::warn!(
            "the Python sshpyk {version} is installed in {} too; both install a `sshpyk` command and \
             this one (sshpyk-rs) has replaced its: its kernels still start (their kernel.json runs \
             its python), `sshpyk list` shows them and `sshpyk edit --adopt` converts them; \
             `pip uninstall sshpyk` removes it (see README.rst, \"Install\")",
            prefix.display()
        );
    }
}

/// Is `launcher` (a kernel.json's argv[0]) the Python sshpyk's `sshpyk` command, installed
/// over ours? (pip's script for it imports `sshpyk.cli`.)
pub(crate) fn replaced_by_python_sshpyk(launcher: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(read) =
        std::fs::File::open(launcher).and_then(|mut f| std::io::Read::read(&mut f, &mut head))
    else {
        return false;
    };
    let head = &head[..read];
    head.starts_with(b"#!")
        && head
            .windows(b"from sshpyk.cli import".len())
            .any(|w| w == b"from sshpyk.cli import")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_sshpyk_is_found_in_the_same_environment() {
        let env = tempfile::tempdir().unwrap();
        let site = env.path().join("lib/python3.11/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::create_dir_all(site.join("sshpyk_rs-0.1.0.dist-info")).unwrap();
        let exe = env.path().join("bin/sshpyk");
        assert_eq!(python_sshpyk_beside(&exe), None);
        std::fs::create_dir_all(site.join("sshpyk-1.25.dist-info")).unwrap();
        assert_eq!(
            python_sshpyk_beside(&exe),
            Some((env.path().to_owned(), "1.25".into()))
        );
    }

    #[test]
    fn its_command_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("sshpyk");
        std::fs::write(&script, "#!/venv/bin/python3\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom sshpyk.cli import main\n").unwrap();
        assert!(replaced_by_python_sshpyk(&script));
        assert!(!replaced_by_python_sshpyk(
            &std::env::current_exe().unwrap()
        ));
    }
}
