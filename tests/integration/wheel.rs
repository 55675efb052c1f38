//! `pip install .` in a fresh venv: the wheel (built by maturin from PyPI, as pip does) puts a
//! working `sshpyk` on the venv's PATH, and each of ours and the Python sshpyk notices the other
//! when pip puts one's `sshpyk` command over the other's.
//!
//! The wheel is built with the dev profile into `target/wheel` (its own target dir: the tests'
//! binaries in `target/debug` stay untouched while other tests run them); the first run compiles
//! the dependencies once, later ones only what changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, Env};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the venv's pip (with the real HOME: pip's cache, cargo's toolchain).
fn pip(venv: &Path, args: &[&str]) {
    let out = Command::new(venv.join("bin/pip"))
        .args(["--disable-pip-version-check", "--quiet"])
        .args(args)
        .env("MATURIN_PEP517_ARGS", "--profile dev")
        .env("CARGO_TARGET_DIR", Path::new(ROOT).join("target/wheel"))
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_elf(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x7fELF"))
}

#[tokio::test]
async fn pip_install_gives_a_working_sshpyk_that_knows_the_python_sshpyk() {
    let env = Env::with_host();
    let venv: PathBuf = env.path("venv");
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    pip(&venv, &["install", ROOT]);
    let sshpyk = venv.join("bin/sshpyk");
    assert!(is_elf(&sshpyk), "{} is not our binary", sshpyk.display());
    let version = Command::new(&sshpyk).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sshpyk "));

    // The installed command adds a kernel that runs it, and the kernel works.
    let mut add = Command::new(&sshpyk);
    env.apply(&mut add);
    let added = add
        .args(["add", "--kernel-name", "k", "--ssh-host-alias", "remote"])
        .args(["--remote-kernel-name", "python3", "--ssh-config"])
        .arg(env.ssh_config())
        .arg("--remote-python-prefix")
        .arg(&env.remote_venv)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    assert_eq!(
        env.read_kernel_json("k")["argv"][0],
        sshpyk.to_str().unwrap()
    );
    common::runs_and_stops(&env, "k").await;

    // The Python sshpyk installed over it: `list` (from another installation) says so.
    pip(&venv, &["install", "--no-deps", "sshpyk==1.25"]);
    assert!(!is_elf(&sshpyk));
    let listed = env.sshpyk().args(["list", "-r"]).output().unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(9), "{text}");
    assert!(
        text.contains(&format!(
            "(x) launcher: {} is now the Python sshpyk's command",
            sshpyk.display()
        )),
        "{text}"
    );

    // Ours installed over the Python sshpyk: it says the other is there, and what that means.
    pip(&venv, &["install", "--force-reinstall", "--no-deps", ROOT]);
    assert!(is_elf(&sshpyk));
    let mut list = Command::new(&sshpyk);
    env.apply(&mut list);
    let listed = list.args(["list", "-r"]).output().unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(
        stderr.contains(&format!(
            "the Python sshpyk 1.25 is installed in {} too",
            venv.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("`sshpyk edit --adopt` converts them"),
        "{stderr}"
    );
}
