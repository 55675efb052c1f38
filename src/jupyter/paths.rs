//! Where Jupyter looks for kernelspecs: the data dirs of the `jupyter` on PATH (it knows its own
//! environment, `JUPYTER_PATH`, `JUPYTER_PREFER_ENV_PATH` and the platform's dirs), else the
//! documented defaults, with the environment of the `python` on PATH standing in for Jupyter's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// `jupyter --paths` imports jupyter_core only; more than this means something is wrong.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The part of `jupyter --paths --json` we use.
#[derive(Debug, Deserialize)]
struct JupyterPaths {
    data: Vec<PathBuf>,
}

/// The data dirs in Jupyter's search order, without duplicates; our user data dir (where `add`
/// writes) is always among them.
pub(crate) fn data_dirs() -> Result<Vec<PathBuf>> {
    let user = user_data_dir()?;
    let mut dirs = match ask_jupyter() {
        Some(dirs) => dirs,
        None => defaults(&user),
    };
    if !dirs.contains(&user) {
        dirs.insert(0, user);
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    Ok(dirs)
}

/// `jupyter --paths --json` of the `jupyter` on PATH, if there is one and it answers.
fn ask_jupyter() -> Option<Vec<PathBuf>> {
    let out = run_bounded(Command::new("jupyter").args(["--paths", "--json"]))?;
    match serde_json::from_slice::<JupyterPaths>(&out) {
        Ok(paths) => Some(paths.data),
        Err(e) => {
            tracing::debug!(
                "`jupyter --paths --json` gave no usable answer ({e}); using the defaults"
            );
            None
        }
    }
}

/// jupyter_core's documented order: `$JUPYTER_PATH`, the user dir, the environment's
/// `share/jupyter` (the active venv or conda env, and the python on PATH), the system dirs.
fn defaults(user: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("JUPYTER_PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs.push(user.to_owned());
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            dirs.push(PathBuf::from(prefix).join("share/jupyter"));
        }
    }
    if let Some(prefix) = python_prefix() {
        dirs.push(prefix.join("share/jupyter"));
    }
    dirs.push("/usr/local/share/jupyter".into());
    dirs.push("/usr/share/jupyter".into());
    dirs
}

/// `sys.prefix` of the `python3` (else `python`) on PATH.
fn python_prefix() -> Option<PathBuf> {
    ["python3", "python"].iter().find_map(|python| {
        let out = run_bounded(Command::new(python).args(["-c", "import sys; print(sys.prefix)"]))?;
        let prefix = String::from_utf8(out).ok()?;
        Some(PathBuf::from(prefix.trim_end())).filter(|p| p.is_absolute())
    })
}

/// The stdout of `command` when it succeeds within [`ASK_TIMEOUT`] (it is killed otherwise).
fn run_bounded(command: &mut Command) -> Option<Vec<u8>> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < ASK_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                tracing::debug!("{command:?} did not answer in time; using the defaults");
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?.ok()?;
    status.success().then_some(out)
}

/// The user's Jupyter data dir, where `add` writes: `$JUPYTER_DATA_DIR`, else the platform
/// default that jupyter_core uses (not `dirs::data_dir()`, which is wrong on macOS).
pub(crate) fn user_data_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("JUPYTER_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = dirs::home_dir().ok_or_else(|| {
        Error::Local("cannot find your home directory: set HOME or JUPYTER_DATA_DIR".into())
    })?;
    if cfg!(target_os = "macos") {
        return Ok(home.join("Library/Jupyter"));
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".local/share"));
    Ok(data_home.join("jupyter"))
}
