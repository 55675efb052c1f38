//! The Python environment with a real Jupyter kernel and client, built once and shared.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::TestUser;

const PACKAGES: [&str; 4] = ["jupyter_client", "ipykernel", "nbclient", "jupyter_server"];
/// A venv runs the interpreter it was made from, so that interpreter must be reachable by every
/// test user (see `TestUser::Chatty`): the system's, when there is one, rather than a pyenv or
/// conda python under /root.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A venv whose python imports jupyter_client, ipykernel, nbclient and jupyter_server: `$SSHPYK_TEST_VENV` if
/// set, else `<workspace>/target/test-venv`. Created (`python3 -m venv`, `pip install`) when the
/// imports fail, under an exclusive lock on `<venv>.lock` so that parallel test processes build
/// it once. Returns the venv's directory.
pub fn python_venv() -> Result<PathBuf> {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    if let Some(venv) = READY.get() {
        return Ok(venv.clone());
    }
    let venv = match std::env::var_os("SSHPYK_TEST_VENV") {
        // cargo runs each package's tests in its own directory: a relative path is ambiguous.
        Some(path) => {
            std::path::absolute(PathBuf::from(path)).context("resolving SSHPYK_TEST_VENV")?
        }
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("testhost has no parent directory")?
            .join("target/test-venv"),
    };
    ensure(&venv)?;
    Ok(READY.get_or_init(|| venv).clone())
}

/// Where [`python_venv_for`] builds a venv for other users when they cannot reach the test venv.
const SHARED_VENV: &str = "/var/tmp/sshpyk-test-venv";

/// A venv `user` can run: the test venv when that user can reach it, else one in /var/tmp, made
/// readable by all (the workspace may sit in a directory only we may enter, as a fresh clone in
/// a 0700 temp dir does).
pub fn python_venv_for(user: TestUser) -> Result<PathBuf> {
    let venv = python_venv()?;
    if user.check_venv(&venv).is_ok() {
        return Ok(venv);
    }
    let shared = PathBuf::from(SHARED_VENV);
    ensure(&shared)?;
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&shared))?;
    user.check_venv(&shared)?;
    Ok(shared)
}

/// Creates `venv` when it lacks a package, under an exclusive lock on `<venv>.lock`.
fn ensure(venv: &Path) -> Result<()> {
    if !has_packages(venv) {
        let _lock = lock(venv)?;
        // Another process may have built it while we waited for the lock.
        if !has_packages(venv) {
            create(venv)?;
        }
    }
    Ok(())
}

fn has_packages(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", &format!("import {}", PACKAGES.join(", "))])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn lock(venv: &Path) -> Result<Flock<File>> {
    let mut path = OsString::from(venv);
    path.push(".lock");
    let path = PathBuf::from(path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", path.display()))
}

fn create(venv: &Path) -> Result<()> {
    let python = if Path::new(SYSTEM_PYTHON).exists() {
        SYSTEM_PYTHON
    } else {
        "python3"
    };
    run(Command::new(python).args(["-m", "venv"]).arg(venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PACKAGES))?;
    if !has_packages(venv) {
        bail!(
            "{} still cannot import {} after pip install",
            venv.display(),
            PACKAGES.join(", ")
        );
    }
    Ok(())
}

/// Runs `command` to its end; its output goes into the error when it fails.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
