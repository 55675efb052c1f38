//! A real JupyterLab in headless Chromium (Debian's, driven by playwright) on an sshpyk kernel:
//! what a person sees in the browser, link cut included. The browser side is
//! tests/clients/jupyterlab_browser.py; this side runs jupyter lab, cuts the link when the
//! script asks, and checks the remote afterwards.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{eventually, venv_python, Env};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

const CHROMIUM: &str = "/usr/bin/chromium";
const CUT: Duration = Duration::from_secs(20);

/// A process we started in its own process group. Dropped while running: SIGTERM to the group
/// (jupyter lab then shuts its kernels down, playwright closes its browser), SIGKILL after 30 s.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(cmd.process_group(0).spawn().expect("spawn"))
    }

    /// Stops the group as its drop does; returns whether it ended on SIGTERM alone.
    fn stop(&mut self) -> bool {
        if self.0.try_wait().unwrap().is_some() {
            return true;
        }
        let group = Pid::from_raw(self.0.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let ended = eventually(Duration::from_secs(30), || {
            self.0.try_wait().unwrap().is_some()
        });
        // Also whatever the leader left in its group.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
        ended
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs every process whose command line names `dir` (the test's temp dir): a backstop on
/// failure for what left its group (sshpyk launchers get a session of their own from Jupyter,
/// playwright's Chromium a group of its own).
fn kill_left_in(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let named = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle));
        if pid != me && named {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(12_000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_string()
}

/// Fails (never skips) when the browser tools are missing: CI must not pass without them.
fn assert_browser_tools() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser test needs Debian's chromium at {CHROMIUM}: run scripts/setup"
    );
    let imports = Command::new(venv_python())
        .args(["-c", "import jupyterlab, playwright"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        imports.success(),
        "the browser test needs jupyterlab and playwright in the test venv ({}): run scripts/setup",
        venv_python().display()
    );
}

/// A run of JupyterLab and the browser script: where each keeps its things, all in the test's
/// temp dir, and how they reach each other.
struct Lab {
    root: PathBuf,
    config: PathBuf,
    tmp: PathBuf,
    log: PathBuf,
    driver_err: PathBuf,
    screenshot: PathBuf,
    port: u16,
    token: String,
}

impl Lab {
    fn new(env: &Env) -> Lab {
        let [root, config, tmp] = ["lab-root", "lab-config", "tmp"].map(|d| env.new_dir(d));
        Lab {
            root,
            config,
            tmp,
            log: env.path("lab.log"),
            driver_err: env.path("driver.stderr"),
            screenshot: env.path("jupyterlab.png"),
            port: sshpyk_testhost::free_port(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Jupyter's and the browser's dirs all in the test's temp dir (HOME too, by env.apply).
    fn private_dirs(&self, env: &Env, cmd: &mut Command) {
        env.apply(cmd);
        cmd.env("JUPYTER_CONFIG_DIR", &self.config)
            .env("IPYTHONDIR", env.path("home/.ipython"))
            .env("TMPDIR", &self.tmp)
            .env_remove("JUPYTER_CONFIG_PATH")
            .env_remove("JUPYTER_TOKEN")
            .env_remove("JUPYTER_PORT");
    }

    /// `jupyter lab` on our port and token, its output in the lab log.
    fn start_lab(&self, env: &Env) -> Group {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(venv_python());
        cmd.args([
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
        ])
        .arg(format!("--ServerApp.port={}", self.port))
        // The port free_port chose or nothing: another one would not be race-free.
        .arg("--ServerApp.port_retries=0")
        .arg(format!("--IdentityProvider.token={}", self.token))
        .arg(format!("--ServerApp.root_dir={}", self.root.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--allow-root");
        }
        self.private_dirs(env, &mut cmd);
        Group::spawn(&mut cmd)
    }

    /// The browser script on `kernel`, talking to us through its stdin and stdout.
    fn start_driver(&self, env: &Env, kernel: &str) -> Group {
        let script = format!(
            "{}/tests/clients/jupyterlab_browser.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let base = format!("http://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(venv_python());
        cmd.arg(script)
            .args([&base, &self.token, kernel])
            .args([&self.root, &self.config, &self.screenshot])
            .arg(CHROMIUM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&self.driver_err).unwrap());
        self.private_dirs(env, &mut cmd);
        Group::spawn(&mut cmd)
    }

    /// What to show on a failure: the script's `transcript`, its stderr, the lab log's end.
    fn report(&self, transcript: &str) -> String {
        format!(
            "{transcript}\n--- driver stderr:\n{}\n--- jupyter lab log (last lines):\n{}",
            tail(&self.driver_err),
            tail(&self.log)
        )
    }
}

/// Follows the browser script to its end, cutting the link for [`CUT`] each time it says
/// "cut": its transcript, and how many cuts it asked for.
fn follow_with_cuts(env: &Env, driver: &mut Group) -> (String, usize) {
    let mut stdin = driver.0.stdin.take().unwrap();
    let stdout = BufReader::new(driver.0.stdout.take().unwrap());
    let mut transcript = String::new();
    let mut cuts = 0;
    for line in stdout.lines() {
        let line = line.unwrap();
        transcript.push_str(&line);
        transcript.push('\n');
        if line == "cut" {
            cuts += 1;
            env.host().link_down().unwrap();
            std::thread::sleep(CUT);
            env.host().link_up().unwrap();
            writeln!(stdin, "ok").unwrap();
        }
    }
    (transcript, cuts)
}

#[test]
fn jupyterlab_in_chromium_runs_interrupts_restarts_and_shuts_down_through_a_link_cut() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    assert_browser_tools();
    let kernel = env.add_kernel("ssh_remote", &[]);
    let started = Instant::now();
    let lab = Lab::new(&env);
    // Declared before the groups, so dropped after their SIGTERM had its chance.
    let _backstop = scopeguard(|| kill_left_in(env.dir.path()));
    let mut server = lab.start_lab(&env);
    let mut driver = lab.start_driver(&env, &kernel);
    let (transcript, cuts) = follow_with_cuts(&env, &mut driver);
    let status = driver.0.wait().unwrap();
    // For a look at what the browser showed (the temp dir goes at the end).
    if let Some(keep) = std::env::var_os("SSHPYK_BROWSER_SCREENSHOT") {
        let _ = std::fs::copy(&lab.screenshot, keep);
    }
    let report = || lab.report(&transcript);
    assert!(status.success(), "the browser script failed:\n{}", report());
    assert_eq!(cuts, 1, "{}", report());
    // The launcher (its stderr is the server's) felt the cut: the cell really printed through it.
    let log = std::fs::read_to_string(&lab.log).unwrap();
    assert!(
        log.contains("connection lost, reconnecting") && log.contains("reconnected after"),
        "{}",
        report()
    );
    assert!(lab.screenshot.exists(), "no screenshot:\n{}", report());

    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(15)),
        "Shut Down Kernel left a remote kernel:\n{}",
        report()
    );
    assert!(
        eventually(Duration::from_secs(15), || env.remote_run_dirs().is_empty()),
        "Shut Down Kernel left {:?}:\n{}",
        env.remote_run_dirs(),
        report()
    );
    assert!(
        server.stop(),
        "jupyter lab did not stop on SIGTERM:\n{}",
        report()
    );
    eprintln!("{transcript}took {:.0?}", started.elapsed());
}

/// Runs `f` when dropped (on success and on a panic alike).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
