//! Local directories mounted on the remote (`--mount-local-on-remote`, lazy: sshfs there over
//! SFTP) end to end: a real sshd "remote host" (its own network namespace and, through
//! `ip netns exec`, its own mount namespace), the real sshfs and FUSE there, the SFTP server in
//! the launcher, a real ipykernel that uses the mount.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, eventually, ready_client, Env, Launcher};
use nix::sys::signal::Signal;
use sshpyk::jupyter::KernelClient;

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);
const CLEANUP: Duration = Duration::from_secs(5);

/// Runs `code` in the remote kernel; returns its stdout, or the error name and value.
async fn run(c: &mut KernelClient, code: &str) -> Result<String, String> {
    let r = c.execute(code, STEP).await.expect("execute");
    match r.status.as_str() {
        "ok" => Ok(r.stdout),
        _ => Err(format!("{:?}", r.error)),
    }
}

/// What the kernel reads from `data.txt` in the mounted directory `remote`.
async fn read_data(c: &mut KernelClient, remote: &dyn std::fmt::Display) -> String {
    run(
        c,
        &format!("print(open('{remote}/data.txt').read(), end='')"),
    )
    .await
    .unwrap()
}

/// A lazy (sshfs) mount: what this module tests. Synced copies are tested in local_on_remote_sync.
fn spec(local: &Path, remote: &Path, options: &str) -> String {
    let mut s = format!("{}:{}:lazy", local.display(), remote.display());
    if !options.is_empty() {
        s.push(',');
        s.push_str(options);
    }
    s
}

/// Mount points as the remote sees them: sshd's mount namespace (it was started by
/// `ip netns exec`, which gives it a namespace of its own, where the mounts are made).
fn remote_mount_points(env: &Env) -> Vec<PathBuf> {
    let pid = env.host().sshd_pid().expect("sshd pid");
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

fn is_mounted(env: &Env, path: &Path) -> bool {
    remote_mount_points(env).iter().any(|p| p == path)
}

fn sshfs_processes(env: &Env) -> Vec<u32> {
    env.remote_processes("sshfs")
}

/// Nothing of the mount remains on the remote: no mount, no mount point we created, no sshfs.
fn assert_clean(env: &Env, mount_points: &[&Path], created: &[&Path]) {
    for mp in mount_points {
        assert!(
            eventually(CLEANUP, || !is_mounted(env, mp)),
            "{} is still mounted",
            mp.display()
        );
    }
    for dir in created {
        assert!(
            eventually(CLEANUP, || !dir.exists()),
            "{} was created by the mount and is still there",
            dir.display()
        );
    }
    assert!(
        eventually(CLEANUP, || sshfs_processes(env).is_empty()),
        "sshfs left running: {:?}",
        sshfs_processes(env)
    );
}

fn project(env: &Env, name: &str) -> PathBuf {
    let dir = env.path(name);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("data.txt"), format!("local {name}\n")).unwrap();
    dir
}

fn wait_exit(launcher: &mut Launcher, timeout: Duration) -> std::process::ExitStatus {
    launcher
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("launcher still running:\n{}", launcher.log()))
}

/// Adds kernel `name` with `extra` flags and a lazy mount of each (local, remote) pair.
fn add_with_mounts(env: &Env, name: &str, extra: &[&str], mounts: &[(&Path, &Path)]) -> String {
    let specs: Vec<String> = mounts.iter().map(|(l, r)| spec(l, r, "")).collect();
    let mut args = extra.to_vec();
    for spec in &specs {
        args.extend(["--mount-local-on-remote", spec]);
    }
    env.add_kernel(name, &args)
}

/// The kernel writes, makes directories, renames, removes and writes a big file in the mounted
/// `remote`: each lands in `local` (the big file byte for byte).
async fn assert_kernel_edits_land_locally(c: &mut KernelClient, remote: &Path, local: &Path) {
    let r = remote.display();
    run(
        c,
        &format!(
            "import os\n\
             open('{r}/written.txt', 'w').write('from the kernel')\n\
             os.makedirs('{r}/new/deeper')\n\
             open('{r}/new/deeper/f', 'w').write('x')\n\
             os.rename('{r}/new/deeper/f', '{r}/sub/moved')\n\
             os.remove('{r}/data.txt')\n\
             with open('{r}/sub/big', 'wb') as f: f.write(os.urandom(3_000_000))\n"
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(local.join("written.txt")).unwrap(),
        "from the kernel"
    );
    assert!(local.join("new/deeper").is_dir());
    assert_eq!(
        std::fs::read_to_string(local.join("sub/moved")).unwrap(),
        "x"
    );
    assert!(!local.join("data.txt").exists());
    let big = std::fs::read(local.join("sub/big")).unwrap();
    assert_eq!(big.len(), 3_000_000);
    let digest = run(
        c,
        &format!(
            "import hashlib; print(hashlib.sha256(open('{r}/sub/big', 'rb').read()).hexdigest())"
        ),
    )
    .await
    .unwrap();
    use sha2::Digest;
    assert_eq!(digest.trim(), hex::encode(sha2::Sha256::digest(&big)));
}

#[tokio::test]
async fn the_kernel_reads_and_writes_local_files_through_the_mount() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let parent = env.path("remote-mnt");
    let remote = parent.join("project");
    let kernel = add_with_mounts(&env, "k", &[], &[(&local, &remote)]);
    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch(&kernel, &conn);
    launcher.wait_ready(START);
    let log = launcher.log();
    assert!(
        log.contains("mounting 1 local dir(s) on the remote"),
        "{log}"
    );
    assert!(is_mounted(&env, &remote));
    let mut c = ready_client(&info).await;
    let r = remote.display();

    // Mounted before the kernel started: visible from the first cell.
    assert_eq!(read_data(&mut c, &r).await, "local project\n");
    assert_kernel_edits_land_locally(&mut c, &remote, &local).await;
    // A file changed locally is seen changed on the remote.
    std::fs::write(local.join("edited.txt"), "v2").unwrap();
    assert_eq!(
        run(&mut c, &format!("print(open('{r}/edited.txt').read())"))
            .await
            .unwrap(),
        "v2\n"
    );

    c.shutdown(false, STEP).await.unwrap();
    let asked = std::time::Instant::now();
    let status = wait_exit(&mut launcher, Duration::from_secs(15));
    assert!(status.success(), "{status}: {}", launcher.log());
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the launcher took {:?} to exit",
        asked.elapsed()
    );
    // A normal exit waits for the unmount: it is gone at once.
    assert!(!is_mounted(&env, &remote), "{}", launcher.log());
    assert!(
        !parent.exists(),
        "the mount points we created must be removed"
    );
    assert_clean(&env, &[&remote], &[&parent]);
    // The local files are untouched by the unmount.
    assert_eq!(
        std::fs::read_to_string(local.join("written.txt")).unwrap(),
        "from the kernel"
    );
}

/// A project to export, with secrets beside it and links from inside it: out to them
/// (absolute, relative, to a directory) and to a file inside (`good-link`).
fn export_with_links_out(env: &Env) -> PathBuf {
    let local = project(env, "export");
    std::fs::write(env.path("secret.txt"), "local secret").unwrap();
    std::fs::create_dir_all(env.path("secret-dir")).unwrap();
    std::fs::write(env.path("secret-dir/key"), "local key").unwrap();
    let link = |target: PathBuf, name: &str| std::os::unix::fs::symlink(target, local.join(name));
    link(env.path("secret.txt"), "abs-link").unwrap();
    link("../secret.txt".into(), "rel-link").unwrap();
    link(env.path("secret-dir"), "dir-link").unwrap();
    link("data.txt".into(), "good-link").unwrap();
    local
}

/// The kernel cannot read `path`; the error it gets.
async fn cannot_read(c: &mut KernelClient, path: &str) -> String {
    let result = run(c, &format!("print(open('{path}').read())")).await;
    result.expect_err(path)
}

/// Links the kernel makes in the mounted `remote` are stored in `local` as given, and are no way
/// out either, to `secret` or up the tree. (With follow_symlinks, sshfs looks the new link up
/// through it, which the server refuses: the kernel may see an error although the link was
/// made.)
async fn kernel_made_links_lead_nowhere(
    c: &mut KernelClient,
    remote: &Path,
    local: &Path,
    secret: &Path,
) {
    let (r, s) = (remote.display(), secret.display());
    for (target, link) in [
        (s.to_string(), "made-link"),
        ("../../secret.txt".into(), "sub/made-rel"),
    ] {
        let _ = run(
            c,
            &format!("import os; os.symlink('{target}', '{r}/{link}')"),
        )
        .await;
        assert_eq!(
            std::fs::read_link(local.join(link)).unwrap(),
            PathBuf::from(&target)
        );
    }
    for path in ["made-link", "sub/made-rel"] {
        cannot_read(c, &format!("{r}/{path}")).await;
    }
}

#[tokio::test]
async fn nothing_outside_the_export_is_visible_or_readable() {
    let env = Env::with_host();
    let local = export_with_links_out(&env);
    let parent = env.path("remote-mnt");
    let remote = parent.join("export");
    let kernel = env.add_kernel(
        "k",
        &[
            "--mount-local-on-remote",
            &spec(&local, &remote, "follow_symlinks"),
        ],
    );
    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch(&kernel, &conn);
    launcher.wait_ready(START);
    let mut c = ready_client(&info).await;
    let r = remote.display();
    let secret = env.path("secret.txt");
    let s = secret.display();

    // The mount shows the export's content; its `..` is the remote's own directory, where
    // nothing of the local side appears.
    let listing = run(
        &mut c,
        &format!(
            "import os; print(sorted(os.listdir('{r}'))); print(sorted(os.listdir('{r}/..')))"
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        listing,
        "['abs-link', 'data.txt', 'dir-link', 'good-link', 'rel-link', 'sub']\n['export']\n"
    );
    // A link inside the export works; links pointing out do not, even with follow_symlinks.
    assert_eq!(
        run(
            &mut c,
            &format!("print(open('{r}/good-link').read(), end='')")
        )
        .await
        .unwrap(),
        "local export\n"
    );
    for path in ["abs-link", "rel-link", "dir-link/key"] {
        let error = cannot_read(&mut c, &format!("{r}/{path}")).await;
        assert!(
            !error.contains("local secret") && !error.contains("local key"),
            "{path}: {error}"
        );
    }
    let result = run(
        &mut c,
        &format!("import os; print(os.listdir('{r}/dir-link'))"),
    )
    .await;
    assert!(result.is_err(), "dir-link: {result:?}");
    // An absolute local path asked through the mount is looked up inside the export.
    let error = cannot_read(&mut c, &format!("{r}{s}")).await;
    assert!(error.contains("FileNotFoundError"), "{error}");
    cannot_read(&mut c, &format!("{r}/../secret.txt")).await;
    kernel_made_links_lead_nowhere(&mut c, &remote, &local, &secret).await;
    // Nothing the remote did changed anything outside.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "local secret");
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut launcher, Duration::from_secs(15)).success());
    assert_clean(&env, &[&remote], &[&parent]);
}

#[tokio::test]
async fn read_only_mounts_refuse_writes_and_two_mounts_work_at_once() {
    let env = Env::with_host();
    let code = project(&env, "code");
    let data = project(&env, "dataset");
    // An existing empty mount point is used, and kept afterwards.
    let existing = env.path("remote-data");
    std::fs::create_dir_all(&existing).unwrap();
    let created = env.path("remote-code");
    let (mut launcher, info) = env.start_kernel(&[
        "--mount-local-on-remote",
        &spec(&code, &created, ""),
        "--mount-local-on-remote",
        &spec(&data, &existing, "ro"),
    ]);
    assert!(launcher.log().contains("mounting 2 local dir(s)"));
    assert!(is_mounted(&env, &created) && is_mounted(&env, &existing));
    let mut c = ready_client(&info).await;
    let (rc, rd) = (created.display(), existing.display());
    assert_eq!(
        run(
            &mut c,
            &format!("print(open('{rc}/data.txt').read() + open('{rd}/data.txt').read(), end='')")
        )
        .await
        .unwrap(),
        "local code\nlocal dataset\n"
    );
    run(&mut c, &format!("open('{rc}/out', 'w').write('ok')"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(code.join("out")).unwrap(), "ok");
    for write in [
        format!("open('{rd}/data.txt', 'w').write('changed')"),
        format!("open('{rd}/new.txt', 'w').write('new')"),
        format!("import os; os.remove('{rd}/data.txt')"),
        format!("import os; os.mkdir('{rd}/dir')"),
        format!("import os; os.rename('{rd}/data.txt', '{rd}/renamed')"),
        format!("import os; os.chmod('{rd}/data.txt', 0o777)"),
        format!("import os; os.symlink('data.txt', '{rd}/link')"),
    ] {
        let result = run(&mut c, &write).await;
        assert!(
            result.as_ref().is_err_and(|e| e.contains("OSError")
                || e.contains("PermissionError")
                || e.contains("Read-only")),
            "{write}: {result:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(data.join("data.txt")).unwrap(),
        "local dataset\n"
    );
    let mut names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["data.txt", "sub"]);

    // SIGTERM: the kernel is ended (its status is the launcher's), and both mounts are
    // unmounted before the launcher exits.
    launcher.signal(Signal::SIGTERM);
    let status = wait_exit(&mut launcher, Duration::from_secs(15));
    assert_eq!(status.code(), Some(143), "{}", launcher.log());
    assert!(!is_mounted(&env, &created) && !is_mounted(&env, &existing));
    assert_clean(&env, &[&created, &existing], &[&created]);
    assert!(
        existing.is_dir(),
        "a mount point that existed before is kept"
    );
}

#[tokio::test]
async fn restart_sigkill_and_a_stale_mount_leave_nothing_behind() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let parent = env.path("remote-mnt");
    let remote = parent.join("p");
    let orphan_timeout = ["--orphan-timeout", "2"];
    let kernel = add_with_mounts(&env, "k", &orphan_timeout, &[(&local, &remote)]);
    let (conn, info) = env.connection_file("a");
    let r = remote.display();

    // Restart as Jupyter does it: shutdown_request(restart=True), the launcher exits, a new
    // one starts on the same connection file.
    let mut first = env.launch(&kernel, &conn);
    first.wait_ready(START);
    let mut c = ready_client(&info).await;
    assert_eq!(read_data(&mut c, &r).await, "local project\n");
    c.shutdown(true, STEP).await.unwrap();
    c.close();
    assert!(wait_exit(&mut first, Duration::from_secs(15)).success());
    assert!(!is_mounted(&env, &remote) && !parent.exists());
    assert_clean(&env, &[&remote], &[&parent]);

    // SIGKILL: the ssh clients die with the launcher, the channels close, and the remote
    // wrapper unmounts and removes the mount point by itself.
    let mut second = env.launch(&kernel, &conn);
    second.wait_ready(START);
    assert!(is_mounted(&env, &remote));
    second.signal(Signal::SIGKILL);
    wait_exit(&mut second, Duration::from_secs(5));
    assert_clean(&env, &[&remote], &[&parent]);

    // A crash that leaves a dead FUSE mount behind (sshfs and its wrapper killed outright):
    // the next start cleans it and mounts again.
    let mut third = env.launch(&kernel, &conn);
    third.wait_ready(START);
    // Frozen first, so that the wrapper cannot clean up when sshfs dies.
    let pids = sshfs_processes(&env);
    for signal in [Signal::SIGSTOP, Signal::SIGKILL] {
        for &pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }
    third.signal(Signal::SIGKILL);
    wait_exit(&mut third, Duration::from_secs(5));
    assert!(
        eventually(CLEANUP, || sshfs_processes(&env).is_empty()),
        "{:?}",
        sshfs_processes(&env)
    );
    assert!(
        is_mounted(&env, &remote),
        "expected a dead mount left behind"
    );
    // The kernel of the SIGKILLed launcher goes after the orphan timeout.
    assert!(env.remote_processes_end("ipykernel", Duration::from_secs(15)));

    let mut fourth = env.launch(&kernel, &conn);
    fourth.wait_ready(START);
    assert!(
        fourth.log().contains("removed a stale mount"),
        "{}",
        fourth.log()
    );
    let mut c = ready_client(&info).await;
    assert_eq!(read_data(&mut c, &r).await, "local project\n");
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut fourth, Duration::from_secs(15)).success());
    // That mount point was there before this run: unmounted, kept.
    assert_clean(&env, &[&remote], &[]);
}

/// The sshfs process itself (not its wrapper, whose command line also names it).
fn sshfs_daemons(env: &Env) -> Vec<u32> {
    sshfs_processes(env)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sshfs")
        })
        .collect()
}

#[tokio::test]
async fn a_mount_that_dies_under_a_running_kernel_is_cleaned_and_reported() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let parent = env.path("remote-mnt");
    let remote = parent.join("p");
    let (mut launcher, info) =
        env.start_kernel(&["--mount-local-on-remote", &spec(&local, &remote, "")]);
    let daemons = sshfs_daemons(&env);
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemons[0] as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    // The wrapper unmounts the dead mount and removes the mount point; the launcher says so
    // and keeps the kernel.
    assert_clean(&env, &[&remote], &[&parent]);
    assert!(
        eventually(CLEANUP, || launcher.log().contains(&format!(
            "mount {} ended: the remote sshfs or its ssh channel is gone",
            remote.display()
        ))),
        "{}",
        launcher.log()
    );
    let mut c = ready_client(&info).await;
    assert_eq!(run(&mut c, "print(1 + 1)").await.unwrap(), "2\n");
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut launcher, Duration::from_secs(15)).success());
}

/// A launch that fails: exit status, the error line, and what must not be left.
fn assert_fails(env: &Env, kernel: &str, code: i32, message: &str) -> String {
    let (conn, info) = env.connection_file(&format!("fail-{}", uuid::Uuid::new_v4()));
    let mut launcher = env.launch(kernel, &conn);
    let status = wait_exit(&mut launcher, Duration::from_secs(30));
    let log = launcher.log();
    assert_eq!(status.code(), Some(code), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error:")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains(message),
        "expected one error line with '{message}':\n{log}"
    );
    for (_, port) in info.ports() {
        assert!(common::port_is_free(port));
    }
    assert!(
        env.remote_processes_end("ipykernel", CLEANUP),
        "a remote kernel was left"
    );
    log
}

#[tokio::test]
async fn each_mount_failure_is_one_clear_error_and_leaves_nothing() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let other = project(&env, "other");

    // No sshfs on the remote.
    let remote = env.path("remote-mnt/p");
    let no_sshfs = ["--remote-sshfs", "/nonexistent/sshfs"];
    let kernel = add_with_mounts(&env, "no-sshfs", &no_sshfs, &[(&local, &remote)]);
    assert_fails(
        &env,
        &kernel,
        5,
        "sshfs not found on the remote: /nonexistent/sshfs does not exist",
    );
    assert!(!env.path("remote-mnt").exists());

    // A mount point that is a non-empty directory (and not a mount).
    let busy = env.path("remote-busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("precious"), "keep me").unwrap();
    let kernel = add_with_mounts(&env, "not-empty", &[], &[(&local, &busy)]);
    assert_fails(&env, &kernel, 5, "is not empty and not a mount");
    assert_eq!(
        std::fs::read_to_string(busy.join("precious")).unwrap(),
        "keep me"
    );
    assert!(!is_mounted(&env, &busy));

    // The local directory removed after `add`: refused before anything starts remotely.
    let gone = project(&env, "gone");
    let kernel = add_with_mounts(&env, "gone", &[], &[(&gone, &env.path("remote-gone"))]);
    std::fs::remove_dir_all(&gone).unwrap();
    let missing = format!("local mount directory {} does not exist", gone.display());
    assert_fails(&env, &kernel, 3, &missing);
    assert!(!env.path("remote-gone").exists());

    // The first of two mounts made, the second impossible: the first is torn down.
    let first = env.path("remote-first/p");
    let kernel = add_with_mounts(&env, "half", &[], &[(&other, &first), (&local, &busy)]);
    assert_fails(&env, &kernel, 5, "is not empty and not a mount");
    assert_clean(&env, &[&first, &busy], &[&env.path("remote-first")]);

    // Mounts made, then the kernel cannot start: the mounts go too.
    let mounted = env.path("remote-then/p");
    let kernel = add_with_mounts(&env, "no-kernel", &[], &[(&local, &mounted)]);
    env.change_settings(&kernel, |s| s["remote_kernel_name"] = "nope".into());
    let log = assert_fails(&env, &kernel, 5, "nope");
    assert!(log.contains("mounted"), "{log}");
    assert_clean(&env, &[&mounted], &[&env.path("remote-then")]);
}

#[tokio::test]
async fn compatibility_mode_reaches_back_with_the_remotes_own_ssh() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let remote = env.path("remote-mnt/p");
    // The remote reaches "this machine" through its own ssh: here, the test host's sshd, which
    // serves the same filesystem; its client config is given to sshfs as the remote's.
    let ssh_command = format!("ssh_command=ssh -F {}", env.ssh_config().display());
    let (mut launcher, info) = env.start_kernel(&[
        "--ssh-host-alias-local-on-remote",
        "remote",
        "--mount-local-on-remote",
        &spec(&local, &remote, &ssh_command),
    ]);
    let mut c = ready_client(&info).await;
    let r = remote.display();
    assert_eq!(read_data(&mut c, &r).await, "local project\n");
    run(&mut c, &format!("open('{r}/back', 'w').write('ok')"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(local.join("back")).unwrap(), "ok");
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut launcher, Duration::from_secs(15)).success());
    assert!(!is_mounted(&env, &remote), "{}", launcher.log());
    assert_clean(&env, &[&remote], &[&env.path("remote-mnt")]);
}

#[test]
fn list_checks_each_mount() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let gone = project(&env, "gone");
    env.add_kernel(
        "good",
        &[
            "--mount-local-on-remote",
            &spec(&local, &env.path("m1"), "ro"),
        ],
    );
    env.add_kernel(
        "bad",
        &[
            "--remote-sshfs",
            "/nonexistent/sshfs",
            "--mount-local-on-remote",
            &spec(&gone, &env.path("m2"), ""),
        ],
    );
    env.add_kernel(
        "compat",
        &[
            "--ssh-host-alias-local-on-remote",
            "back",
            "--mount-local-on-remote",
            &spec(&local, &env.path("m3"), ""),
        ],
    );
    std::fs::remove_dir_all(&gone).unwrap();
    let out = env.sshpyk().args(["list", "--remote"]).output().unwrap();
    // "bad" has (x) rows: the documented exit code, after the complete listing.
    assert_eq!(out.status.code(), Some(9));
    let text = String::from_utf8(out.stdout).unwrap();
    // A kernel's header line, then its indented rows.
    let section = |name: &str| -> String {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.starts_with(&format!("  {name}  ")));
        let header = lines.next().expect(name);
        let rows: Vec<&str> = lines.take_while(|l| l.starts_with("    ")).collect();
        format!("{header}\n{}", rows.join("\n"))
    };
    let good = section("good");
    for row in [
        format!(
            "(i) mount: {} on remote {} (lazy,ro)",
            local.display(),
            env.path("m1").display()
        ),
        "(v) mount local dir:".into(),
        "(v) mount confinement: openat2 RESOLVE_BENEATH".into(),
        "read-only enforced by sshpyk".into(),
        "(v) remote sshfs: /usr/bin/sshfs".into(),
        "(v) remote FUSE:".into(),
    ] {
        assert!(good.contains(&row), "missing '{row}' in:\n{good}");
    }
    let bad = section("bad");
    for row in [
        "(x) mount local dir:",
        "(x) remote sshfs: /nonexistent/sshfs not found",
    ] {
        assert!(bad.contains(row), "missing '{row}' in:\n{bad}");
    }
    let compat = section("compat");
    assert!(
        compat.contains("(!) mount confinement: compatibility mode"),
        "{compat}"
    );
}

/// The "mounted" log lines for `local` so far (one per successful mount or remount).
fn times_mounted(launcher: &Launcher, local: &Path) -> usize {
    launcher
        .log()
        .matches(&format!("mounted {} on ", local.display()))
        .count()
}

#[tokio::test]
async fn a_failed_remount_is_tried_again_at_the_next_reconnection() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let remote = env.path("remote-mnt/p");
    // An sshfs that can be taken away on the remote for a while.
    let sshfs = env.path("bin/sshfs");
    std::fs::create_dir_all(env.path("bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/sshfs", &sshfs).unwrap();
    let (mut launcher, info) = env.start_kernel(&[
        "--remote-sshfs",
        sshfs.to_str().unwrap(),
        "--mount-local-on-remote",
        &spec(&local, &remote, ""),
    ]);
    assert_eq!(times_mounted(&launcher, &local), 1);

    std::fs::remove_file(&sshfs).unwrap();
    env.close_master();
    assert!(
        eventually(STEP, || launcher
            .log()
            .contains("could not mount again after reconnecting")),
        "{}",
        launcher.log()
    );
    assert!(!is_mounted(&env, &remote));

    std::os::unix::fs::symlink("/usr/bin/sshfs", &sshfs).unwrap();
    env.close_master();
    assert!(
        eventually(STEP, || times_mounted(&launcher, &local) == 2),
        "{}",
        launcher.log()
    );
    let mut c = ready_client(&info).await;
    let r = remote.display();
    assert_eq!(read_data(&mut c, &r).await, "local project\n");
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut launcher, Duration::from_secs(15)).success());
    assert_clean(&env, &[&remote], &[&env.path("remote-mnt")]);
}

#[tokio::test]
async fn a_nested_export_replaced_by_a_symlink_still_serves_its_own_directory() {
    let env = Env::with_host();
    let local = project(&env, "project");
    let inner = local.join("data");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("inside.txt"), "inner").unwrap();
    std::fs::write(env.path("secret.txt"), "local secret").unwrap();
    let outer_mnt = env.path("remote-outer");
    let inner_mnt = env.path("remote-inner");
    let (mut launcher, info) = env.start_kernel(&[
        "--mount-local-on-remote",
        &spec(&local, &outer_mnt, ""),
        "--mount-local-on-remote",
        &spec(&inner, &inner_mnt, "ro"),
    ]);
    let mut c = ready_client(&info).await;
    let (outer, inner_r) = (outer_mnt.display(), inner_mnt.display());
    // Through the writable mount, the read-only export's directory becomes a link to `/`.
    run(
        &mut c,
        &format!(
            "import os\n\
             os.rename('{outer}/data', '{outer}/data-moved')\n\
             os.symlink('/', '{outer}/data')"
        ),
    )
    .await
    .unwrap();
    assert!(inner.is_symlink());
    env.close_master();
    assert!(
        eventually(STEP, || times_mounted(&launcher, &inner) == 2),
        "{}",
        launcher.log()
    );
    let mut c = ready_client(&info).await;
    assert_eq!(
        run(&mut c, &format!("print(sorted(os.listdir('{inner_r}')))"))
            .await
            .unwrap(),
        "['inside.txt']\n"
    );
    let secret = env.path("secret.txt");
    assert!(run(
        &mut c,
        &format!("print(open('{inner_r}{}').read())", secret.display())
    )
    .await
    .is_err());
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut launcher, Duration::from_secs(15)).success());
}

#[tokio::test]
async fn the_remote_state_dir_is_private_and_goes_with_the_last_mount() {
    // A `TMPDIR` of the test's own on the remote (where the mount wrappers keep their state),
    // so that other tests' mounts do not share it.
    let env = Env::remote_host()
        .session_env("TMPDIR", |env| env.new_dir("remote-tmp"))
        .build();
    let tmp = env.path("remote-tmp");
    let local = project(&env, "project");
    let remote = env.path("remote-mnt/p");
    let states = tmp.join(format!("sshpyk-mounts-{}", nix::unistd::getuid()));
    let kernel = env.add_kernel(
        "k",
        &["--mount-local-on-remote", &spec(&local, &remote, "")],
    );

    // Planted as a symlink (here to a private dir of ours): refused.
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &states).unwrap();
    assert_fails(&env, &kernel, 5, "is not a private directory");
    std::fs::remove_file(&states).unwrap();

    let (conn, info) = env.connection_file("a");
    let mut launcher = env.launch(&kernel, &conn);
    launcher.wait_ready(START);
    let meta = std::fs::symlink_metadata(&states).unwrap();
    assert!(meta.is_dir() && meta.permissions().mode() & 0o777 == 0o700);
    let mut c = ready_client(&info).await;
    c.shutdown(false, STEP).await.unwrap();
    assert!(wait_exit(&mut launcher, Duration::from_secs(15)).success());
    assert_clean(&env, &[&remote], &[&env.path("remote-mnt")]);
    assert!(
        eventually(CLEANUP, || !states.exists()),
        "{} was left behind",
        states.display()
    );
}
