//! `sshpyk mount`: a remote directory mounted here by a real local sshfs over FUSE, against the
//! real test sshd; the subshell driven through a pseudo-terminal.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{eventually, json_of, on_terminal, pty, Env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sshpyk_testhost::TestUser;

/// A child process, killed when dropped.
struct Running(Child);

impl Running {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }

    /// Its exit code (-1 when killed by a signal), if it exits within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let mut status = None;
        eventually(timeout, || {
            status = self.0.try_wait().unwrap();
            status.is_some()
        });
        status.map(|s| s.code().unwrap_or(-1))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `sshpyk mount`, its stderr in a file.
struct Mount {
    child: Running,
    log: PathBuf,
}

impl Mount {
    fn pid(&self) -> Pid {
        self.child.pid()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (`timeout` at most) for `sshpyk mount` to exit with `code` (-1: a signal).
    fn assert_exit(&mut self, timeout: Duration, code: i32) {
        assert_eq!(self.child.wait(timeout), Some(code), "{}", self.log());
    }
}

fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// Nothing is mounted at `mountpoint` any more, and the mount point sshpyk made is removed.
fn assert_unmounted_and_removed(mountpoint: &Path) {
    assert!(!is_mounted(mountpoint));
    assert!(
        !mountpoint.exists(),
        "the mount point sshpyk created is removed"
    );
}

/// sshfs processes serving `mountpoint`.
fn sshfs_for(mountpoint: &Path) -> Vec<u32> {
    let needle = mountpoint.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"sshfs")) && args.contains(&needle.as_bytes())
        })
        .collect()
}

/// A remote directory with one file in it (the test host's filesystem is this machine's).
fn remote_dir(env: &Env) -> PathBuf {
    let dir = env.path("remote-data/shared");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the remote\n").unwrap();
    dir
}

impl MountCmd<'_> {
    fn spawn(&self) -> Mount {
        let log = self
            .env
            .path(&format!("mount-{}.log", uuid::Uuid::new_v4()));
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Mount {
            child: Running(cmd.spawn().expect("sshpyk mount starts")),
            log,
        }
    }

    /// Runs to completion: (exit code, stderr).
    fn output(&self) -> (i32, String) {
        let out = self.command().stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshpyk"));
        self.env.apply(&mut cmd);
        cmd.args(&self.pre).arg("mount");
        if self.env.host.is_some() && !self.args.iter().any(|a| a == "--umount") {
            let config = self.config.clone().unwrap_or_else(|| self.env.ssh_config());
            cmd.arg("--ssh-config").arg(config);
        }
        cmd.args(&self.args);
        cmd
    }
}

/// `sshpyk [pre] mount --ssh-config <host's> ARGS`.
struct MountCmd<'a> {
    env: &'a Env,
    pre: Vec<String>,
    args: Vec<String>,
    config: Option<PathBuf>,
}

fn mount_cmd<'a>(env: &'a Env, args: &[&str]) -> MountCmd<'a> {
    MountCmd {
        env,
        pre: Vec::new(),
        args: args.iter().map(|a| a.to_string()).collect(),
        config: None,
    }
}

/// Waits until sshpyk says the mount is there (it holds it from then on).
fn wait_mounted(mount: &mut Mount, mountpoint: &Path) {
    let ok = eventually(Duration::from_secs(30), || {
        mount.log().contains("is mounted on") || mount.child.exited()
    });
    assert!(
        ok && is_mounted(mountpoint),
        "not mounted; sshpyk said:\n{}",
        mount.log()
    );
}

/// `sshpyk mount --foreground` of the test's remote directory on a mount point it creates,
/// waited for: (the mount, the remote directory, the mount point).
fn foreground_mount(env: &Env) -> (Mount, PathBuf, PathBuf) {
    let remote = remote_dir(env);
    let mountpoint = env.path("mnt");
    let mut mount = mount_cmd(env, &["--ssh-host-alias", "remote", "--foreground", "-r"])
        .arg(&remote)
        .arg(&mountpoint)
        .spawn();
    wait_mounted(&mut mount, &mountpoint);
    (mount, remote, mountpoint)
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    lines[0]
}

#[test]
fn foreground_mount_reads_writes_shows_in_list_and_ends_on_ctrl_c() {
    let env = Env::with_host();
    let (mut mount, remote, mountpoint) = foreground_mount(&env);
    let remote_arg = remote.to_str().unwrap();

    assert_eq!(
        std::fs::read_to_string(mountpoint.join("hello.txt")).unwrap(),
        "hello from the remote\n"
    );
    std::fs::write(mountpoint.join("result.txt"), "written here\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(remote.join("result.txt")).unwrap(),
        "written here\n"
    );

    let listed = json_of(env.sshpyk().args(["list", "--json", "-n"]));
    let mounts = listed["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{listed}");
    assert_eq!(mounts[0]["alias"], "remote");
    assert_eq!(mounts[0]["remote_path"], remote_arg);
    assert_eq!(mounts[0]["mountpoint"], mountpoint.to_str().unwrap());
    assert_eq!(mounts[0]["mode"], "foreground");
    let listed = json_of(env.sshpyk().args(["mounts", "list", "--json"]));
    assert_eq!(
        listed["remote_on_local"],
        serde_json::json!(mounts),
        "{listed}"
    );
    let human = env.sshpyk().args(["list", "-n"]).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout)
        .contains(&format!("remote:{remote_arg} on {}", mountpoint.display())));

    // A second mount on the same mount point is refused, naming the way out.
    let (code, stderr) = mount_cmd(&env, &["--ssh-host-alias", "remote", "--foreground"])
        .arg(&mountpoint)
        .output();
    assert_eq!(code, 3, "{stderr}");
    assert!(one_line(&stderr).contains("is already mounted"), "{stderr}");

    kill(mount.pid(), Signal::SIGINT).unwrap();
    mount.assert_exit(Duration::from_secs(10), 0);
    assert_unmounted_and_removed(&mountpoint);
    assert!(sshfs_for(&mountpoint).is_empty(), "sshfs ended");
    assert!(
        !std::fs::read_dir(env.path("rt"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("mount-")),
        "the mount's record is removed"
    );
}

impl<'a> MountCmd<'a> {
    fn arg(mut self, arg: impl AsRef<Path>) -> MountCmd<'a> {
        self.args.push(arg.as_ref().to_string_lossy().into_owned());
        self
    }

    fn verbose(mut self) -> MountCmd<'a> {
        self.pre.push("-v".into());
        self
    }
}

#[test]
fn users_options_win_over_sshpyks_defaults_for_ssh_and_sshfs() {
    // Logged in as another user: sshpyk's default idmap=user shows its files as ours.
    let env = Env::remote_host().user(TestUser::Chatty).build();
    let remote_uid = env.host().login_ids().0.as_raw();
    let local_uid = nix::unistd::geteuid().as_raw();
    assert_ne!(remote_uid, local_uid);
    let mount_home = |options: &[&str], name: &str| {
        let mountpoint = env.path(name);
        // No -r: the remote home, which the remote user owns.
        let mut args = vec![
            "--ssh-host-alias",
            "remote",
            "--foreground",
            "-o",
            "LogLevel=DEBUG1",
        ];
        args.extend_from_slice(options);
        let mut mount = mount_cmd(&env, &args).verbose().arg(&mountpoint).spawn();
        wait_mounted(&mut mount, &mountpoint);
        let uid = std::fs::metadata(&mountpoint).unwrap().uid();
        assert!(
            mountpoint.join(".profile").exists(),
            "the remote home is mounted"
        );
        kill(mount.pid(), Signal::SIGTERM).unwrap();
        mount.assert_exit(Duration::from_secs(10), 0);
        (uid, mount.log())
    };

    let (uid, log) = mount_home(&[], "defaults");
    assert_eq!(uid, local_uid, "idmap=user by default:\n{log}");
    assert!(
        log.contains("mux_client_request_session"),
        "rides the master by default:\n{log}"
    );

    // The user's sshfs option comes after sshpyk's, and FUSE keeps the last.
    let (uid, log) = mount_home(&["-o", "idmap=none"], "idmap-none");
    assert_eq!(uid, remote_uid, "{log}");

    // The user's ssh option comes before sshpyk's, and OpenSSH keeps the first: ControlPath=none
    // makes sshfs's ssh log in by itself instead of riding the master.
    let (_, log) = mount_home(&["-o", "ControlPath=none"], "own-connection");
    assert!(!log.contains("mux_client_request_session"), "{log}");
    assert!(log.contains("Authenticated to"), "{log}");

    // --direct: sshfs's own connection, no master opened or used.
    let (_, log) = mount_home(&["--direct"], "direct");
    assert!(
        !log.contains("opened a ControlMaster") && !log.contains("reusing the ControlMaster"),
        "{log}"
    );
    assert!(!log.contains("mux_client_request_session"), "{log}");
    assert!(log.contains("Authenticated to"), "{log}");
}

/// A command running on a pseudo-terminal of its own (its controlling terminal), as in a
/// terminal emulator; everything it prints is collected.
struct Terminal {
    input: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    child: Running,
}

impl Terminal {
    fn spawn(mut cmd: Command) -> Terminal {
        // Wide enough that the line editor never folds the prompt.
        let (controller, terminal) = pty(Some((50, 500)));
        on_terminal(&mut cmd, &terminal);
        let child = cmd.spawn().expect("starts on the terminal");
        drop(cmd);
        drop(terminal);
        let master = std::fs::File::from(controller);
        let mut reader = master.try_clone().unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let collected = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            input: master,
            output,
            child: Running(child),
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn type_line(&mut self, line: &str) {
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn wait_for(&self, needle: &str) {
        assert!(
            eventually(Duration::from_secs(30), || self.output().contains(needle)),
            "no {needle:?} on the terminal:\n{}",
            self.output()
        );
    }

    /// Waits (20 s at most) for the command to exit with `code`.
    fn assert_exit(&mut self, code: i32) {
        let got = self.child.wait(Duration::from_secs(20));
        assert_eq!(got, Some(code), "{}", self.output());
    }
}

/// `sshpyk mount --kernel-name k` of a subshell in bash, with a ~/.bashrc of the user's own.
fn subshell_on_terminal(env: &Env, mountpoint: &Path) -> Terminal {
    subshell_of(env, mountpoint, "/bin/bash", ".bashrc")
}

/// `sshpyk mount --kernel-name k` of a subshell in `shell`, whose start-up file `rc` in the
/// user's home sets `FROM_USER_RC`.
fn subshell_of(env: &Env, mountpoint: &Path, shell: &str, rc: &str) -> Terminal {
    let remote = remote_dir(env);
    env.add_kernel("k", &[]);
    std::fs::write(env.path("home").join(rc), "export FROM_USER_RC=yes\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshpyk"));
    env.apply(&mut cmd);
    cmd.env("SHELL", shell)
        .env("TERM", "dumb")
        .args(["mount", "--kernel-name", "k", "-r"])
        .arg(&remote)
        .arg(mountpoint);
    let terminal = Terminal::spawn(cmd);
    terminal.wait_for(&format!("(sshpyk: remote:{}) ", remote.display()));
    terminal
}

#[test]
fn subshell_holds_the_mount_and_its_exit_status_becomes_ours() {
    let env = Env::with_host();
    let mountpoint = env.path("mnt");
    let mut terminal = subshell_on_terminal(&env, &mountpoint);
    terminal.type_line(r#"echo "rc=$FROM_USER_RC"; cat "$SSHPYK_MOUNT/hello.txt""#);
    terminal.wait_for("rc=yes");
    terminal.wait_for("hello from the remote");
    // Something still in the mount when the shell exits: named, then detached lazily.
    terminal.type_line(r#"(cd "$SSHPYK_MOUNT" && exec sleep 301) &"#);
    terminal.type_line("sleep 0.5; exit 7");
    terminal.assert_exit(7);
    let said = terminal.output();
    let busy = said
        .lines()
        .find(|l| l.contains("still in use by"))
        .unwrap_or_else(|| panic!("no busy line:\n{said}"));
    assert!(busy.contains("(sleep)"), "{busy}");
    let holder: i32 = busy
        .split("still in use by ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let _ = kill(Pid::from_raw(holder), Signal::SIGKILL);
    assert!(!is_mounted(&mountpoint));
    assert!(sshfs_for(&mountpoint).is_empty());
}

#[test]
fn zsh_shows_the_mount_in_its_prompt_after_the_users_zshrc() {
    let env = Env::with_host();
    let mountpoint = env.path("mnt");
    let mut terminal = subshell_of(&env, &mountpoint, "/usr/bin/zsh", ".zshrc");
    terminal.type_line(r#"echo "rc=$FROM_USER_RC"; cat "$SSHPYK_MOUNT/hello.txt"; exit 3"#);
    terminal.wait_for("rc=yes");
    terminal.wait_for("hello from the remote");
    terminal.assert_exit(3);
    assert_unmounted_and_removed(&mountpoint);
}

#[test]
fn a_closed_terminal_hangs_up_the_subshell_and_unmounts() {
    let env = Env::with_host();
    let mountpoint = env.path("mnt");
    let mut terminal = subshell_on_terminal(&env, &mountpoint);
    kill(terminal.child.pid(), Signal::SIGHUP).unwrap();
    // bash ended by SIGHUP: 128 + 1.
    terminal.assert_exit(129);
    assert_unmounted_and_removed(&mountpoint);
    assert!(sshfs_for(&mountpoint).is_empty());
}

#[test]
fn a_sigkilled_sshpyk_leaves_no_sshfs_and_no_mount() {
    let env = Env::with_host();
    let (mut mount, _, mountpoint) = foreground_mount(&env);
    assert_eq!(sshfs_for(&mountpoint).len(), 1);
    kill(mount.pid(), Signal::SIGKILL).unwrap();
    // Reaped, as the shell that started it would.
    mount.assert_exit(Duration::from_secs(5), -1);
    assert!(
        eventually(Duration::from_secs(10), || !is_mounted(&mountpoint)
            && sshfs_for(&mountpoint).is_empty()),
        "mounted: {}, sshfs: {:?}",
        is_mounted(&mountpoint),
        sshfs_for(&mountpoint)
    );
    // `list` forgets the mount of the dead process and removes the mount point it created.
    assert!(mountpoint.exists());
    let listed = json_of(env.sshpyk().args(["list", "--json", "-n"]));
    assert_eq!(listed["mounts"], serde_json::json!([]));
    assert!(!mountpoint.exists());
}

#[test]
fn umount_removes_a_dead_mount_and_lazy_detaches_a_busy_one() {
    let env = Env::with_host();
    let remote = remote_dir(&env);
    let mountpoint = env.path("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    // A mount whose sshfs died (no auto_unmount): "Transport endpoint is not connected".
    let mut raw = Command::new("sshfs")
        .arg("-f")
        .arg("-F")
        .arg(env.ssh_config())
        .arg(format!("remote:{}", remote.display()))
        .arg(&mountpoint)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || is_mounted(
        &mountpoint
    )));
    let mut holder = Command::new("sleep")
        .arg("302")
        .current_dir(&mountpoint)
        .spawn()
        .unwrap();
    raw.kill().unwrap();
    raw.wait().unwrap();
    let dead = |p: &Path| matches!(std::fs::metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    assert!(eventually(Duration::from_secs(5), || dead(&mountpoint)));

    let (code, stderr) = mount_cmd(&env, &["--ssh-host-alias", "remote", "--foreground"])
        .arg(&mountpoint)
        .output();
    assert_eq!(code, 3, "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("dead mount") && line.contains("--umount"),
        "{line}"
    );

    let (code, stderr) = mount_cmd(&env, &["--umount"]).arg(&mountpoint).output();
    assert_eq!(code, 7, "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("busy")
            && line.contains(&format!("{} (sleep)", holder.id()))
            && line.contains("--lazy"),
        "{line}"
    );
    assert!(is_mounted(&mountpoint));

    let (code, stderr) = mount_cmd(&env, &["--umount", "--lazy"])
        .arg(&mountpoint)
        .output();
    assert_eq!(code, 0, "{stderr}");
    assert!(!is_mounted(&mountpoint));

    let (code, stderr) = mount_cmd(&env, &["--umount"]).arg(&mountpoint).output();
    assert_eq!(code, 3, "{stderr}");
    assert!(
        one_line(&stderr).contains("is not a mount point"),
        "{stderr}"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// A directory of symlinks to just `programs`, to stand for a PATH that lacks the others.
fn path_with(env: &Env, name: &str, programs: &[&str]) -> PathBuf {
    let dir = env.path(name);
    std::fs::create_dir(&dir).unwrap();
    for program in programs {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(program))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{program} is installed"));
        std::os::unix::fs::symlink(found, dir.join(program)).unwrap();
    }
    dir
}

/// `cmd` in a mount namespace of its own, where /dev/fuse is /dev/null.
fn with_dev_fuse_as_dev_null(env: &Env, cmd: Command) -> Command {
    let mut unshared = Command::new("unshare");
    unshared
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind /dev/null /dev/fuse && exec "$0" "$@""#)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    env.apply(&mut unshared);
    unshared
}

/// `cmd` (an `sshpyk mount` on `mountpoint`) fails with `code` and one line that says each of
/// `needles`, and leaves no mount point and no sshfs.
fn assert_refused(mut cmd: Command, code: i32, needles: &[&str], mountpoint: &Path) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let line = one_line(&stderr);
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} not in {line}");
    }
    assert!(
        !mountpoint.exists(),
        "the mount point is not left behind: {line}"
    );
    assert!(sshfs_for(mountpoint).is_empty());
}

#[test]
fn each_error_is_one_line_with_its_exit_code_and_leaves_nothing() {
    let env = Env::with_host();
    let remote = remote_dir(&env);
    let fresh = env.path("fresh");
    let base = ["--ssh-host-alias", "remote", "--foreground"];
    let mount = |args: &[&str]| mount_cmd(&env, args).arg(&fresh).command();
    let check = |cmd, code, needles: &[&str]| assert_refused(cmd, code, needles, &fresh);

    check(
        mount(&["--foreground"]),
        3,
        &["--ssh-host-alias ALIAS or --kernel-name NAME"],
    );
    check(
        mount(&["--ssh-host-alias", "nowhere"]),
        3,
        &["'nowhere' is not defined in", "Host nowhere"],
    );
    let full = env.path("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("mine.txt"), "").unwrap();
    let (code, stderr) = mount_cmd(&env, &base).arg(&full).output();
    assert_eq!(code, 3, "{stderr}");
    assert!(one_line(&stderr).contains("is not empty"), "{stderr}");
    check(
        mount(&["--ssh-host-alias", "remote", "-r", "/no/such/dir"]),
        5,
        &[
            "remote directory remote:/no/such/dir does not exist",
            "-r/--remote-path",
        ],
    );
    let file = remote.join("hello.txt");
    check(
        mount(&["--ssh-host-alias", "remote", "-r", file.to_str().unwrap()]),
        5,
        &["is not a directory"],
    );

    // Authentication that needs a human: a key the server does not know, and no master to ride
    // (the earlier cases opened one with the right key).
    let mut stranger = mount_cmd(&env, &["--ssh-host-alias", "remote"]).arg(&fresh);
    stranger.config = Some(env.ssh_config_with_an_unknown_key("stranger_config"));
    let mut cmd = stranger.command();
    cmd.env_remove("SSH_AUTH_SOCK")
        .env("SSHPYK_RUNTIME_DIR", env.path("rt-stranger"));
    check(cmd, 4, &["authentication to 'remote'", "sshpyk connect"]);

    // Missing tools and an unusable /dev/fuse, before anything is touched: exit code 7.
    let with_only = |name: &str, programs: &[&str]| {
        let mut cmd = mount(&base);
        cmd.env("PATH", path_with(&env, name, programs));
        cmd
    };
    check(
        with_only("bin-no-sshfs", &["ssh", "fusermount3"]),
        7,
        &["apt install sshfs"],
    );
    check(
        with_only("bin-no-fuse", &["ssh", "sshfs"]),
        7,
        &["apt install fuse3"],
    );
    check(
        with_dev_fuse_as_dev_null(&env, mount(&base)),
        7,
        &["/dev/fuse is missing or not the FUSE device"],
    );
}

/// A copy for local user `user` of what it needs to log in to the test host and run sshpyk,
/// in a private temp dir of its own: key (`id`), `known_hosts`, ssh `config`, `sshpyk`.
fn own_copy_for(env: &Env, user: &nix::unistd::User) -> tempfile::TempDir {
    let own = tempfile::Builder::new()
        .prefix("sshpyk-nonroot-")
        .tempdir()
        .unwrap();
    let dir = own.path();
    let give = |path: &Path, mode: u32| {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    give(dir, 0o700);
    let host_dir = env.host().dir();
    for (from, to, mode) in [
        (host_dir.join("id_ed25519"), "id", 0o600),
        (host_dir.join("known_hosts"), "known_hosts", 0o644),
        (PathBuf::from(env!("CARGO_BIN_EXE_sshpyk")), "sshpyk", 0o755),
    ] {
        std::fs::copy(&from, dir.join(to)).unwrap();
        give(&dir.join(to), mode);
    }
    let config = env.ssh_config_with(&[
        ("IdentityFile", &dir.join("id")),
        ("UserKnownHostsFile", &dir.join("known_hosts")),
    ]);
    std::fs::write(dir.join("config"), config).unwrap();
    give(&dir.join("config"), 0o644);
    own
}

/// `sshpyk mount --foreground -o allow_other` of the remote home at `mountpoint`, run as
/// `user` from its [`own_copy_for`] `dir` (through runuser), its stderr in `log`.
fn mount_allow_other_as(user: &str, dir: &Path, mountpoint: &Path, log: &Path) -> Child {
    Command::new("runuser")
        .args(["-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin"])
        .arg(format!("HOME={}", dir.display()))
        .arg(format!("SSHPYK_RUNTIME_DIR={}/rt", dir.display()))
        .arg(dir.join("sshpyk"))
        .args([
            "mount",
            "--foreground",
            "--ssh-host-alias",
            "remote",
            "-o",
            "allow_other",
        ])
        .arg("--ssh-config")
        .arg(dir.join("config"))
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn allow_other_refused_by_fuse_is_retried_without_it_for_a_non_root_user() {
    let env = Env::remote_host().user(TestUser::Chatty).build();
    // A local user other than root that every machine has (the test users exist only inside
    // their hosts).
    let user = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("the user nobody");
    let own = own_copy_for(&env, &user);
    let mountpoint = own.path().join("mnt");
    let log = env.path("nonroot.log");
    let mut child = mount_allow_other_as(&user.name, own.path(), &mountpoint, &log);
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(30), || said().contains("is mounted on")
            || child.try_wait().unwrap().is_some()),
        "{}",
        said()
    );
    let allowed = std::fs::read_to_string("/etc/fuse.conf")
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "user_allow_other");
    let retried = said().contains("FUSE refused allow_other");
    assert_eq!(retried, !allowed, "{}", said());
    assert!(is_mounted(&mountpoint), "{}", said());
    // Without allow_other only its owner sees into the mount, not even root.
    let seen = Command::new("runuser")
        .args(["-u", &user.name, "--", "test", "-e"])
        .arg(mountpoint.join(".profile"))
        .status()
        .unwrap();
    assert!(seen.success(), "the remote home is mounted");
    // The retry is said in one line.
    let lines = said().lines().filter(|l| l.contains("allow_other")).count();
    assert_eq!(lines, usize::from(retried), "{}", said());
    // sshpyk itself, not runuser (which would SIGKILL it after a SIGTERM).
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let sshpyk: i32 = std::fs::read_to_string(children)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(sshpyk), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", said());
    assert_unmounted_and_removed(&mountpoint);
}

#[test]
fn a_lost_connection_ends_a_foreground_mount_with_one_line_and_nothing_left() {
    let env = Env::with_host();
    let (mut mount, _, mountpoint) = foreground_mount(&env);
    assert!(env.host().kill_sshd_connections().unwrap() > 0);
    // sshfs notices on its next request.
    let _ = std::fs::metadata(mountpoint.join("hello.txt"));
    mount.assert_exit(Duration::from_secs(20), 4);
    let log = mount.log();
    let last = log.lines().last().unwrap();
    assert!(
        last.contains("the mount of remote:") && last.contains("-o reconnect"),
        "{log}"
    );
    assert_unmounted_and_removed(&mountpoint);
    assert!(sshfs_for(&mountpoint).is_empty());
}
