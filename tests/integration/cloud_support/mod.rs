//! Real storage servers on the test host's side of the network (inside its namespace, on its
//! loopback, where the remote's rclone reaches them): S3 from `moto` in server mode (with IAM
//! authentication on, so that wrong credentials are refused), WebDAV from `rclone serve webdav`.
//! And what the tests look at on the remote: rclone processes, mounts, config files; what they
//! do there: `sshpyk mounts add` of those stores, code in the kernel. For cloud_on_remote and
//! mounts_command.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use sshpyk::jupyter::connection::ConnectionInfo;
use sshpyk::jupyter::KernelClient;

use crate::common::{eventually, ready_client, Env, Launcher};

/// How long a start with cloud mounts may take, a cell, a cleanup on the remote.
pub const START: Duration = Duration::from_secs(90);
pub const STEP: Duration = Duration::from_secs(30);
pub const CLEANUP: Duration = Duration::from_secs(10);

/// What the cloud venv has (scripts/setup installs the same).
const CLOUD_PACKAGES: [&str; 2] = ["moto[server]", "azure-storage-blob"];

/// The venv with moto's server and Azure's SDK, made once under a lock (scripts/setup makes it
/// too).
pub fn cloud_venv() -> PathBuf {
    let venv = std::env::var_os("SSHPYK_CLOUD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cloud-venv"));
    let ready = |v: &Path| {
        Command::new(v.join("bin/python"))
            .args(["-c", "import moto.server, azure.storage.blob"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&venv) {
        let lock = File::create(venv.with_extension("lock")).unwrap();
        let _lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        if !ready(&venv) {
            run_ok(
                Command::new("/usr/bin/python3")
                    .args(["-m", "venv"])
                    .arg(&venv),
            );
            run_ok(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "--disable-pip-version-check"])
                    .args(CLOUD_PACKAGES),
            );
        }
    }
    venv
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = clean_env(cmd).stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Without this machine's CA bundle settings (rclone 1.60 fails on AWS_CA_BUNDLE with a custom
/// transport), as on a plain remote.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for var in ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        cmd.env_remove(var);
    }
    cmd
}

/// A server process on the remote's side; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// The server process (`ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// S3 (moto) with IAM on: the first three calls (made here) create a user, its key and a
/// policy; from then on only that key works. Returns the server and the key as `--creds` JSON.
pub fn s3_server(env: &Env) -> (Server, String) {
    let venv = cloud_venv();
    let port = sshpyk_testhost::free_port();
    let mut cmd = env.host().remote_command(
        venv.join("bin/moto_server"),
        ["-H", "127.0.0.1", "-p", &port.to_string()],
    );
    clean_env(&mut cmd)
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(env.path("moto.log")).unwrap());
    let server = Server {
        child: cmd.spawn().unwrap(),
        port,
    };
    wait_listening(env, port, "moto_server");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/cloud_support/s3_user.py");
    let mut cmd = env.host().remote_command(
        venv.join("bin/python"),
        [
            script.as_os_str(),
            format!("http://127.0.0.1:{port}").as_ref(),
        ],
    );
    let creds = run_ok(&mut cmd);
    (server, creds.trim().to_string())
}

fn wait_listening(env: &Env, port: u16, what: &str) {
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = env
                .host()
                .remote_command("ss", ["-ltnH", &format!("sport = :{port}")])
                .output()
                .unwrap();
            !out.stdout.is_empty()
        }),
        "{what} did not listen on port {port}"
    );
}

/// [`s3_server`] with `bucket` made in it: (server, key, the tests' own rclone config for it,
/// see [`s3_config`]).
pub fn s3_bucket(env: &Env, bucket: &str) -> (Server, String, PathBuf) {
    let (server, creds) = s3_server(env);
    let config = s3_config(env, server.port, &creds);
    rclone(env, &config, &["mkdir", &format!("s3:{bucket}")]);
    (server, creds, config)
}

/// `rclone serve webdav` of `dir` with a user and password.
pub fn webdav_server(env: &Env, dir: &Path, user: &str, pass: &str) -> Server {
    webdav_server_on(env, dir, user, pass, sshpyk_testhost::free_port())
}

/// [`webdav_server`] on `port` (the same store again, after the first one was stopped).
pub fn webdav_server_on(env: &Env, dir: &Path, user: &str, pass: &str, port: u16) -> Server {
    let mut cmd = env.host().remote_command(
        "rclone",
        [
            "serve",
            "webdav",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--user",
            user,
            "--pass",
            pass,
        ],
    );
    cmd.arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(env.path("webdav.log")).unwrap());
    let server = Server {
        child: cmd.spawn().unwrap(),
        port,
    };
    wait_listening(env, port, "rclone serve webdav");
    server
}

/// An rclone config for the tests' own access to the S3 server (`s3:` remote).
pub fn s3_config(env: &Env, port: u16, creds: &str) -> PathBuf {
    let creds: serde_json::Value = serde_json::from_str(creds).unwrap();
    let path = env.path("test-rclone.conf");
    std::fs::write(
        &path,
        format!(
            "[s3]\ntype = s3\nprovider = Other\nendpoint = http://127.0.0.1:{port}\naccess_key_id = {}\nsecret_access_key = {}\n",
            creds["access_key_id"].as_str().unwrap(),
            creds["secret_access_key"].as_str().unwrap()
        ),
    )
    .unwrap();
    path
}

/// `rclone` on the remote's side with the tests' own config.
pub fn rclone(env: &Env, config: &Path, args: &[&str]) -> String {
    let mut cmd = env.host().remote_command("rclone", ["--config"]);
    cmd.arg(config).args(args);
    run_ok(&mut cmd)
}

/// Whether `path` of the store holds `text`, no more (`rclone cat`).
pub fn store_holds(env: &Env, config: &Path, path: &str, text: &str) -> bool {
    let mut cmd = env.host().remote_command("rclone", ["--config"]);
    cmd.arg(config).args(["cat", path]);
    clean_env(&mut cmd)
        .output()
        .is_ok_and(|o| o.stdout == text.as_bytes())
}

/// `rclone rcat`: `text` into `path` of the store.
pub fn put(env: &Env, config: &Path, path: &str, text: &str) {
    let mut cmd = env.host().remote_command("rclone", ["--config"]);
    cmd.arg(config).args(["rcat", path]);
    let mut child = clean_env(&mut cmd).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// `rclone mount` processes on the remote: (pid, its config file).
pub fn rclone_mounts(env: &Env) -> Vec<(u32, PathBuf)> {
    env.host()
        .remote_pids()
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a == "mount") || !args[0].ends_with("rclone") {
                return None;
            }
            let config = args.iter().position(|a| a == "--config")?;
            Some((pid, PathBuf::from(&args[config + 1])))
        })
        .collect()
}

/// Mount points as the remote sees them (sshd's mount namespace).
pub fn is_mounted(env: &Env, path: &Path) -> bool {
    let pid = env.host().sshd_pid().expect("sshd pid");
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(p) == path)
}

/// Every command line of the remote's processes, joined.
pub fn remote_command_lines(env: &Env) -> String {
    env.host()
        .remote_pids()
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Azurite (the Azure Storage emulator, from npm) serving blobs; returns it and an account SAS
/// URL for it. scripts/setup installs it in target/azurite.
pub fn azurite(env: &Env) -> (Server, String) {
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/azurite");
    let azurite = prefix.join("node_modules/.bin/azurite-blob");
    if !azurite.exists() {
        let lock = File::create(prefix.with_extension("lock")).unwrap();
        let _lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        if !azurite.exists() {
            run_ok(
                Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&prefix)
                    .arg("azurite"),
            );
        }
    }
    let port = sshpyk_testhost::free_port();
    let data = env.path("azurite");
    std::fs::create_dir_all(&data).unwrap();
    let mut cmd = env.host().remote_command(
        &azurite,
        [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--location",
        ],
    );
    cmd.arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(env.path("azurite.log")).unwrap());
    let server = Server {
        child: cmd.spawn().unwrap(),
        port,
    };
    wait_listening(env, port, "azurite");
    (server, azure_sas(port, false))
}

/// An account SAS URL for Azurite at `port`; `bad`: with a wrong signature.
pub fn azure_sas(port: u16, bad: bool) -> String {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/cloud_support/azure_sas.py");
    let mut cmd = Command::new(cloud_venv().join("bin/python"));
    cmd.arg(script).arg(format!("http://127.0.0.1:{port}"));
    if bad {
        cmd.arg("bad");
    }
    run_ok(&mut cmd).trim().to_string()
}

/// Runs `code` in the remote kernel; its stdout, or the error's name and value.
pub async fn run(c: &mut KernelClient, code: &str) -> Result<String, String> {
    let r = c.execute(code, STEP).await.expect("execute");
    match r.status.as_str() {
        "ok" => Ok(r.stdout),
        _ => Err(format!("{:?}", r.error)),
    }
}

pub fn write_private(env: &Env, name: &str, text: &str) -> PathBuf {
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `sshpyk mounts add` of an S3 source on the test server.
pub fn add_s3(
    env: &Env,
    kernel: &str,
    port: u16,
    creds: &Path,
    source: &str,
    remote: &Path,
    rw: bool,
) -> assert_cmd::Command {
    let mut cmd = env.sshpyk();
    cmd.args(["mounts", "add", "--kernel-name", kernel, "--backend", "s3"])
        .args(["--set", "provider=Other"])
        .arg("--set")
        .arg(format!("endpoint=http://127.0.0.1:{port}"))
        .arg("--creds")
        .arg(creds)
        .args(["--source", source]);
    if rw {
        cmd.arg("--rw");
    }
    cmd.arg(remote);
    cmd
}

/// A WebDAV store served by `rclone serve webdav` on the test host, its credentials file,
/// and where the tests mount it: (store dir, server, creds, mount point).
pub fn dav_store(env: &Env) -> (PathBuf, Server, PathBuf, PathBuf) {
    let dav = env.path("dav");
    std::fs::create_dir_all(&dav).unwrap();
    let server = webdav_server(env, &dav, "dav-user", "dav-pass-123");
    let creds = write_private(env, "dav.json", r#"{"pass": "dav-pass-123"}"#);
    (dav, server, creds, env.path("remote-dav"))
}

/// `sshpyk mounts add` of that store at `mnt` for kernel "k".
pub fn add_dav(env: &Env, port: u16, creds: &Path, mnt: &Path, rw: bool) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sshpyk"));
    env.apply(&mut cmd);
    cmd.args(["mounts", "add", "--kernel-name", "k", "--backend", "webdav"])
        .arg("--set")
        .arg(format!("url=http://127.0.0.1:{port}/"))
        .args(["--set", "vendor=other", "--set", "user=dav-user"])
        .arg("--creds")
        .arg(creds);
    if rw {
        cmd.arg("--rw");
    }
    cmd.arg(mnt);
    cmd
}

pub fn secrets_dir(env: &Env) -> PathBuf {
    env.path("home/.config/sshpyk/secrets")
}

pub fn secret_files(env: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(secrets_dir(env))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Nothing of a cloud mount is left on the remote: no rclone, no mount, no config directory,
/// no mount point we created.
pub fn assert_clean(env: &Env, mount_points: &[&Path], configs: &[PathBuf], created: &[&Path]) {
    assert!(
        eventually(CLEANUP, || rclone_mounts(env).is_empty()),
        "rclone left running: {:?}",
        rclone_mounts(env)
    );
    for mp in mount_points {
        assert!(
            eventually(CLEANUP, || !is_mounted(env, mp)),
            "{} is still mounted",
            mp.display()
        );
    }
    for config in configs {
        let dir = config.parent().unwrap();
        assert!(
            eventually(CLEANUP, || !dir.exists()),
            "{} is still there",
            dir.display()
        );
    }
    for dir in created {
        assert!(
            eventually(CLEANUP, || !dir.exists()),
            "{} was created and is still there",
            dir.display()
        );
    }
}

/// Starts `kernel` as Jupyter would (connection file `name`), up to "ready".
pub fn launch_ready(env: &Env, kernel: &str, name: &str) -> (Launcher, ConnectionInfo) {
    let (conn, info) = env.connection_file(name);
    let mut launcher = env.launch(kernel, &conn);
    launcher.wait_ready(START);
    (launcher, info)
}

/// [`launch_ready`], and a client of the kernel.
pub async fn start(env: &Env, kernel: &str, name: &str) -> (Launcher, KernelClient) {
    let (launcher, info) = launch_ready(env, kernel, name);
    (launcher, ready_client(&info).await)
}

/// Shuts the kernel down through `c`: its launcher exits 0 within `timeout`.
pub async fn shut_down(c: &mut KernelClient, launcher: &mut Launcher, timeout: Duration) {
    c.shutdown(false, STEP).await.unwrap();
    let status = launcher.wait_timeout(timeout).expect("launcher exits");
    assert!(status.success(), "{status}: {}", launcher.log());
}

/// Code that prints the text of `file`, for [`run`].
pub fn print_file(file: &Path) -> String {
    format!("print(open('{}').read(), end='')", file.display())
}

/// `sshpyk mounts remove` of `mnt` from kernel "k".
pub fn mounts_remove(env: &Env, mnt: &Path) -> assert_cmd::assert::Assert {
    env.sshpyk()
        .args(["mounts", "remove", "--kernel-name", "k"])
        .arg(mnt)
        .assert()
}
