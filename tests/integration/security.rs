//! The session key never shows: not in any process's argv (local or remote), not in the logs at
//! the highest verbosity, not in a file that others can read. Names that another user can take
//! first are passed by.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, json_of, one_line_error, Env};
use nix::sys::signal::Signal;
use sshpyk::jupyter::KernelClient;

const STEP: Duration = Duration::from_secs(20);

/// Every process whose command line contains `secret`.
fn processes_showing(secret: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(secret))
        .collect()
}

/// Files under `dir` that contain `secret` and are readable by group or others.
fn exposed_files(dir: &Path, secret: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            exposed_files(&path, secret, found);
        } else if meta.is_file() {
            exposed_file(&path, secret, found);
        }
    }
}

/// `path`, if it contains `secret` and is readable by group or others.
fn exposed_file(path: &Path, secret: &str, found: &mut Vec<String>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let text = std::fs::read(path).unwrap_or_default();
    if String::from_utf8_lossy(&text).contains(secret) && meta.permissions().mode() & 0o077 != 0 {
        found.push(format!(
            "{} ({:o})",
            path.display(),
            meta.permissions().mode()
        ));
    }
}

#[tokio::test]
async fn the_session_key_never_appears_in_argv_logs_or_readable_files() {
    let env = Env::with_host();
    env.add_kernel("k", &[]);
    let (conn, info) = env.connection_file("a");
    let secret = info.key.clone();

    let log = env.path("launcher-vvv.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sshpyk"));
    cmd.args(["-vvv", "launch", "--kernelspec"])
        .arg(env.kernel_dir("k"))
        .arg(&conn);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    env.apply(&mut cmd);
    let mut launcher = common::Launcher {
        child: cmd.spawn().unwrap(),
        log,
    };
    launcher.wait_ready(Duration::from_secs(60));

    let check = |when: &str| {
        assert_eq!(
            processes_showing(&secret),
            Vec::<String>::new(),
            "{when}: the key is in a command line"
        );
        let mut found = Vec::new();
        exposed_files(env.dir.path(), &secret, &mut found);
        // Stray temp files would land at the top of /tmp; its subtrees belong to other processes.
        for entry in std::fs::read_dir("/tmp").unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path());
            if meta.is_ok_and(|m| m.is_file()) {
                exposed_file(&entry.path(), &secret, &mut found);
            }
        }
        assert_eq!(
            found,
            Vec::<String>::new(),
            "{when}: the key is in a file others can read"
        );
    };
    check("running");
    let mut c = KernelClient::connect(&info, STEP).await.unwrap();
    c.wait_for_ready(STEP).await.unwrap();
    assert_eq!(c.execute("print(1)", STEP).await.unwrap().stdout, "1\n");
    launcher.signal(Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    check("after an interrupt");
    launcher.signal(Signal::SIGTERM);
    // The kernel is ended by SIGTERM: its status is the launcher's.
    assert_eq!(
        launcher.wait_timeout(STEP).expect("exits").code(),
        Some(143),
        "{}",
        launcher.log()
    );
    check("after shutdown");
    let log = launcher.log();
    assert!(
        log.contains("DEBUG") || log.contains("TRACE"),
        "expected verbose logs:\n{log}"
    );
    assert!(
        log.contains("debug1:"),
        "ssh's own debug output is on at -vvv:\n{log}"
    );
    assert!(!log.contains(&secret), "the key is in the -vvv log");
}

/// Another user created `$TMPDIR/sshpyk-<uid>` first (the runtime dir when neither
/// SSHPYK_RUNTIME_DIR nor XDG_RUNTIME_DIR is set): launches and `ps` use a private dir of an
/// unpredictable name instead, and keep using it once the squatter's dir is gone.
#[tokio::test]
async fn a_squatted_runtime_dir_in_tmp_is_passed_by() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: squatting as another uid needs root");
        return;
    }
    let env = Env::with_host();
    let tmp = env.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, PermissionsExt::from_mode(0o1777)).unwrap();
    let squat = tmp.join(format!("sshpyk-{}", nix::unistd::getuid()));
    std::fs::create_dir(&squat).unwrap();
    std::fs::set_permissions(&squat, PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&squat, Some(65534), Some(65534)).unwrap();
    let tmpdir = tmp.to_str().unwrap();
    let vars = [
        ("SSHPYK_RUNTIME_DIR", ""),
        ("XDG_RUNTIME_DIR", ""),
        ("TMPDIR", tmpdir),
    ];
    let ps = || {
        let mut cmd = env.sshpyk();
        cmd.envs(vars).args(["ps", "--json"]);
        let out = cmd.assert().success().get_output().stdout.clone();
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()
    };

    let kernel = env.add_kernel("k", &[]);
    let (conn, _) = env.connection_file("a");
    let mut launcher = env.launch_with_env(&kernel, &conn, &vars);
    launcher.wait_ready(Duration::from_secs(60));
    assert_eq!(
        ps()[0]["launcher_pid"],
        launcher.pid(),
        "{}",
        launcher.log()
    );
    // A dir of an unpredictable name beside it, named by a record in our home.
    let host = nix::unistd::gethostname().unwrap();
    let record = env
        .path("home/.cache/sshpyk")
        .join(format!("runtime-{}", host.to_string_lossy()));
    let used = std::path::PathBuf::from(std::fs::read_to_string(&record).unwrap());
    assert_eq!(used.parent(), Some(tmp.as_path()));
    let name = used.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("sshpyk-{}-", nix::unistd::getuid())));
    let meta = std::fs::metadata(&used).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert!(std::fs::read_dir(&squat).unwrap().next().is_none());

    // Found again once the squatter's dir is gone: the running kernel stays listed.
    std::fs::remove_dir(&squat).unwrap();
    assert_eq!(ps()[0]["launcher_pid"], launcher.pid());
    assert!(!squat.exists());
    launcher.signal(Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(20)).is_some());
}

/// Another local user holds connections to a launcher until it runs out of file descriptors:
/// its control socket logs the failed accepts and goes on, so once they are gone `ps` lists
/// the kernel again (its socket is not deleted as a dead launcher's).
#[tokio::test]
async fn the_control_socket_survives_running_out_of_file_descriptors() {
    let env = Env::with_host();
    let (launcher, info) = env.start_kernel(&[]);
    let pid = launcher.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let prlimit = |new: *const libc::rlimit, old: *mut libc::rlimit| {
        // SAFETY: prlimit reads `new` and writes `old`, each when not null.
        assert_eq!(
            unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, new, old) },
            0
        );
    };
    let mut before = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    prlimit(std::ptr::null(), &mut before);
    let limit = libc::rlimit {
        rlim_cur: open_fds + 4,
        rlim_max: before.rlim_max,
    };
    prlimit(&limit, std::ptr::null_mut());
    let socket = env.path(&format!("rt/launch-{pid}.sock"));
    let held: Vec<std::os::unix::net::UnixStream> = (0..16)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64
    };
    assert!(common::eventually(Duration::from_secs(10), || fds() >= limit.rlim_cur));
    // Connections still wait in the backlog: accept fails.
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    // The other user gone, the launcher has its descriptors back.
    prlimit(&before, std::ptr::null_mut());

    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    assert_eq!(ps[0]["launcher_pid"], pid, "{}", launcher.log());
    assert!(socket.exists());
    let mut c = common::ready_client(&info).await;
    assert_eq!(
        c.execute("print(6 * 7)", STEP).await.unwrap().stdout,
        "42\n"
    );
    assert!(launcher.log().contains("control socket: accept failed"));
}

/// A ControlPath in a shared dir where another user listens first: sshpyk hands that socket
/// nothing (ssh's own client would pass it our sessions, stdio included) and says whose it is,
/// for `connect`, `sshpyk mount` and a launch alike.
#[tokio::test]
async fn a_control_path_that_another_user_listens_on_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: listening as another uid needs root");
        return;
    }
    let env = Env::with_host();
    let shared = env.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o1777)).unwrap();
    let socket = shared.join("cm");
    let listen = "import socket,sys,time\ns=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen()\nprint('up',flush=True)\ntime.sleep(60)";
    let mut nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", listen])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(nobody.stdout.as_mut().unwrap()),
        &mut up,
    )
    .unwrap();
    assert_eq!(up.trim(), "up");
    // The first value of an option wins: this ControlPath beats the host's.
    let config = env.path("shared-ssh-config");
    std::fs::write(
        &config,
        format!(
            "Host remote\n    ControlPath {}\n{}",
            socket.display(),
            std::fs::read_to_string(env.ssh_config()).unwrap()
        ),
    )
    .unwrap();
    let refused = |cmd: &mut assert_cmd::Command| {
        let out = cmd.assert().failure();
        let err = one_line_error(&out);
        assert!(
            err.contains(&format!(
                "the ControlMaster socket {} belongs to uid 65534",
                socket.display()
            )),
            "{err}"
        );
    };
    refused(
        env.sshpyk()
            .args(["connect", "remote", "--ssh-config"])
            .arg(&config),
    );
    let mnt = env.path("mnt");
    refused(
        env.sshpyk()
            .args(["mount", "--ssh-host-alias", "remote", "--ssh-config"])
            .arg(&config)
            .args(["--foreground", "-r", "/tmp"])
            .arg(&mnt),
    );
    env.add_kernel("k", &[]);
    let spec = env.kernel_dir("k").join("kernel.json");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        &serde_json::to_string(env.ssh_config().to_str().unwrap()).unwrap(),
        &serde_json::to_string(config.to_str().unwrap()).unwrap(),
    );
    std::fs::write(&spec, text).unwrap();
    let (conn, _) = env.connection_file("a");
    let mut launcher = env.launch("k", &conn);
    let status = launcher.wait_timeout(STEP).expect("the launch fails");
    assert!(!status.success());
    assert!(
        launcher.log().contains("belongs to uid 65534"),
        "{}",
        launcher.log()
    );
    let _ = nobody.kill();
    let _ = nobody.wait();
}

/// `SSHPYK_RUNTIME_DIR=$HOME`: refused in one line, the home directory's mode left alone.
#[test]
fn a_runtime_dir_the_user_named_is_never_chmoded() {
    let env = Env::local();
    let home = env.path("home");
    std::fs::set_permissions(&home, PermissionsExt::from_mode(0o755)).unwrap();
    let out = env
        .sshpyk()
        .env("SSHPYK_RUNTIME_DIR", &home)
        .arg("ps")
        .assert()
        .failure();
    let err = one_line_error(&out);
    assert!(
        err.contains(&format!(
            "SSHPYK_RUNTIME_DIR {} is mode 755, not private",
            home.display()
        )) && err.contains("chmod 700"),
        "{err}"
    );
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
}
