//! Puts the git revision into `sshpyk --version` when built from a git checkout; a source
//! tarball or an sdist (no git, no `.git`) builds without one.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Only a checkout of this very project: not a parent directory's repository (a tarball
    // unpacked inside some other checkout).
    let top = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let ours = top.is_some_and(|t| t == std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    let revision = ours
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten();
    if ours {
        // A new commit or checkout changes HEAD or the ref it names.
        for path in ["HEAD", "refs", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            println!("cargo:rerun-if-changed={common}/refs/heads");
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let full = match revision {
        Some(rev) => format!("{version} (git {rev})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=SSHPYK_VERSION={full}");
}
