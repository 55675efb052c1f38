//! `sshpyk mounts` itself, against a running kernel: add, list and remove live (cloud and
//! local-on-remote mounts), during a reconnection and after an add gave up; its refusals of bad
//! input; the secrets files it keeps, and that `add --replace` and `delete` take them along.
//! The stores are cloud_support's; each backend end to end: cloud_on_remote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cloud_support::{
    self, add_dav, add_s3, assert_clean, dav_store, is_mounted, launch_ready, mounts_remove,
    print_file, put, rclone_mounts, run, secret_files, write_private, CLEANUP,
};
use crate::common::{eventually, json_of, one_line_error, ready_client, Env};
use nix::sys::signal::Signal;
use sshpyk::jupyter::KernelClient;

/// `sshpyk mounts add` of Dropbox at /mnt/box for kernel "k", its token from stdin.
fn add_dropbox(env: &Env, token: &str) -> assert_cmd::assert::Assert {
    env.sshpyk()
        .args([
            "mounts",
            "add",
            "--kernel-name",
            "k",
            "--backend",
            "dropbox",
        ])
        .args(["--creds", "-", "/mnt/box"])
        .write_stdin(format!(r#"{{"token": "{token}"}}"#))
        .assert()
}

/// Kills the rclone of the kernel's one mount: `ps` soon reports the mount failing.
fn kill_rclone_until_failing(env: &Env) {
    let (rclone_pid, _) = rclone_mounts(env)[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rclone_pid as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    // Its death reaches the supervisor's bookkeeping a moment later.
    let mut ps = serde_json::Value::Null;
    let failing = eventually(Duration::from_secs(10), || {
        ps = json_of(env.sshpyk().args(["ps", "--json"]));
        ps[0]["mounts"][0]["state"] == "failing"
    });
    assert!(failing, "{ps}");
}

/// Adds to kernel "k" (with one mount of bucket "live" running) that S3 at `port` refuses:
/// `wrong` credentials, a missing bucket with the right ones (`creds`). Each fails with exit
/// code 5; the kernelspec, the secrets and the mounts stay as they were.
fn assert_refused_adds_change_nothing(env: &Env, port: u16, creds: &Path, wrong: &Path) {
    let before = std::fs::read_to_string(env.kernel_dir("k").join("kernel.json")).unwrap();
    let other = env.path("remote-live/other");
    let failed = add_s3(env, "k", port, wrong, "live", &other, false)
        .assert()
        .code(5);
    let err = one_line_error(&failed);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert_eq!(
        std::fs::read_to_string(env.kernel_dir("k").join("kernel.json")).unwrap(),
        before
    );
    assert_eq!(secret_files(env).len(), 1);
    assert!(!other.exists());
    let failed = add_s3(env, "k", port, creds, "nobucket", &other, false)
        .assert()
        .code(5);
    let err = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
    assert!(err.contains("s3:nobucket does not exist"), "{err}");
    assert_eq!(rclone_mounts(env).len(), 1);
}

/// `mounts remove` of `mnt`, kernel "k"'s one mount, while the kernel (client `c`) runs: gone
/// there at once, with its rclone and secrets, and from the kernelspec.
async fn assert_removed_at_once(env: &Env, c: &mut KernelClient, mnt: &Path) {
    mounts_remove(env, mnt).success();
    assert_eq!(
        run(
            c,
            &format!("import os; print(os.path.exists('{}'))", mnt.display())
        )
        .await,
        Ok("False\n".into())
    );
    assert!(rclone_mounts(env).is_empty());
    assert!(secret_files(env).is_empty());
    assert!(
        !std::fs::read_to_string(env.kernel_dir("k").join("kernel.json"))
            .unwrap()
            .contains("cloud_mounts")
    );
}

#[tokio::test]
async fn mounts_change_on_a_running_kernel_and_go_with_a_sigkilled_launcher() {
    let env = Env::with_host();
    let (server, creds, config) = cloud_support::s3_bucket(&env, "live");
    put(&env, &config, "s3:live/data.txt", "live data\n");
    let creds_file = write_private(&env, "creds.json", &creds);
    let mut wrong: serde_json::Value = serde_json::from_str(&creds).unwrap();
    wrong["secret_access_key"] = "not-the-key".into();
    let wrong_file = write_private(&env, "wrong.json", &wrong.to_string());
    let (mut launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    let mnt = env.path("remote-live/bucket");
    let add = |rw| {
        add_s3(&env, "k", server.port, &creds_file, "live", &mnt, rw)
            .assert()
            .success()
    };

    // Added while the kernel runs: it sees the bucket at once, no restart.
    let added = add(false);
    let out = String::from_utf8_lossy(&added.get_output().stdout).into_owned();
    assert!(
        out.contains(&format!("for kernel {}", launcher.remote_pid())),
        "{out}"
    );
    assert!(out.contains("mounted now on 1 running kernel(s)"), "{out}");
    assert_eq!(
        run(&mut c, &print_file(&mnt.join("data.txt"))).await,
        Ok("live data\n".into())
    );

    // A mount whose rclone dies is reported failing; removed and added again.
    kill_rclone_until_failing(&env);
    mounts_remove(&env, &mnt).success();
    assert!(!is_mounted(&env, &mnt));
    add(false);

    // Refused credentials, a missing bucket: one line, exit 5, nothing changed.
    assert_refused_adds_change_nothing(&env, server.port, &creds_file, &wrong_file);

    // Removed while the kernel runs: gone there at once, and from the kernelspec.
    assert_removed_at_once(&env, &mut c, &mnt).await;

    // Added again, then the launcher is SIGKILLed: the remote cleans up by itself.
    add(true);
    let mounts = rclone_mounts(&env);
    assert_eq!(mounts.len(), 1);
    c.close();
    launcher.signal(Signal::SIGKILL);
    launcher
        .wait_timeout(Duration::from_secs(5))
        .expect("killed");
    let configs: Vec<PathBuf> = mounts.into_iter().map(|(_, c)| c).collect();
    assert_clean(&env, &[&mnt], &configs, &[&env.path("remote-live")]);
    // Its control socket is found dead and removed by the next reader.
    let socket = env.path(&format!("rt/launch-{}.sock", launcher.pid()));
    assert!(socket.exists());
    let ps = env.sshpyk().arg("ps").assert().success();
    assert!(String::from_utf8_lossy(&ps.get_output().stdout).contains("no running sshpyk kernels"));
    assert!(!socket.exists());
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let env = Env::local();
    let spec_dir = env.kernel_dir("k");
    std::fs::create_dir_all(&spec_dir).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kernelspecs/ssh_gpu_python3/kernel.json"),
        spec_dir.join("kernel.json"),
    )
    .unwrap();
    let refused = |args: &[&str], message: &str| {
        let out = env
            .sshpyk()
            .args(["mounts", "add", "--kernel-name", "k"])
            .args(args)
            .assert()
            .code(3);
        let err = one_line_error(&out);
        assert!(err.contains(message), "{args:?}: {err}");
    };
    refused(
        &["--backend", "s3", "--set", "bucket=x", "/mnt/x"],
        "s3 has no key 'bucket'; known keys: access_key_id",
    );
    refused(
        &["--backend", "s3", "--set", "secret_access_key=x", "/mnt/x"],
        "is a secret",
    );
    refused(
        &["--backend", "s3", "/mnt/x"],
        "s3 needs access_key_id + secret_access_key",
    );
    refused(&["--backend", "s3", "relative"], "must be absolute");
    let raw = write_private(&env, "raw.conf", "[mine]\ntype = s3\n");
    refused(
        &[
            "--rclone-config",
            raw.to_str().unwrap(),
            "--source",
            "other:b",
            "/mnt/x",
        ],
        "a section of",
    );
    refused(
        &[
            "--backend",
            "webdav",
            "--set",
            "url=http://h",
            "--rclone-flag=--config=/x",
            "/mnt/x",
        ],
        "set by sshpyk itself",
    );
    assert!(secret_files(&env).is_empty());
    let spec = std::fs::read_to_string(spec_dir.join("kernel.json")).unwrap();
    assert!(!spec.contains("cloud_mounts"));

    // Secrets from stdin; with no kernel running, only the kernelspec changes.
    add_dropbox(&env, "tok-from-stdin")
        .success()
        .stdout(predicates::str::contains("it is mounted at every start"));
    let spec = std::fs::read_to_string(spec_dir.join("kernel.json")).unwrap();
    assert!(
        spec.contains("/mnt/box") && !spec.contains("tok-from-stdin"),
        "{spec}"
    );
    let files = secret_files(&env);
    assert_eq!(files.len(), 1);
    assert!(std::fs::read_to_string(&files[0])
        .unwrap()
        .contains("tok-from-stdin"));
    // `delete` takes the secrets along.
    env.sshpyk().args(["delete", "k"]).assert().success();
    assert!(secret_files(&env).is_empty());
}

#[tokio::test]
async fn local_dirs_on_the_remote_are_listed_and_removed_live_too() {
    let env = Env::with_host();
    let local = env.path("project");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("data.txt"), "local\n").unwrap();
    let remote = env.path("remote-project");
    let spec = format!("{}:{}", local.display(), remote.display());
    let (launcher, info) = env.start_kernel(&["--mount-local-on-remote", &spec]);
    let mut c = ready_client(&info).await;
    let list = json_of(env.sshpyk().args(["mounts", "list", "--json"]));
    let kernel = &list["kernels"][0];
    assert_eq!(kernel["kernel_name"], "k");
    assert_eq!(kernel["configured"][0]["kind"], "local-on-remote");
    assert_eq!(kernel["configured"][0]["state"], "configured");
    let live = &kernel["running"][0];
    assert_eq!(live["remote_pid"], launcher.remote_pid());
    assert_eq!(live["mounts"][0]["state"], "mounted");
    assert_eq!(live["mounts"][0]["source"], local.to_str().unwrap());

    mounts_remove(&env, &remote)
        .success()
        .stdout(predicates::str::contains("unmounted"));
    assert_eq!(
        run(
            &mut c,
            &format!("import os; print(os.path.ismount('{}'))", remote.display())
        )
        .await,
        Ok("False\n".into())
    );
    assert!(env.remote_processes("sshfs").is_empty());
    assert!(env.read_kernel_json("k")["metadata"]["sshpyk"]["mounts"]
        .as_array()
        .unwrap()
        .is_empty());
    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    assert!(ps[0]["mounts"].as_array().unwrap().is_empty(), "{ps}");
    // Nothing left to remove: one clear line.
    let out = mounts_remove(&env, &remote).code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("has no mount at"), "{err}");
}

/// `add --replace` and `delete` take the kernel's secrets files along, `delete` even when the
/// kernel's settings no longer parse.
#[test]
fn replaced_or_deleted_kernels_leave_no_secrets_behind() {
    let env = Env::with_host();
    let add_mount = || {
        add_dropbox(&env, "tok").success();
        assert_eq!(secret_files(&env).len(), 1);
    };
    env.add_kernel("k", &[]);
    add_mount();
    env.add_kernel("k", &["--replace"]);
    assert!(secret_files(&env).is_empty());

    add_mount();
    let path = env.kernel_dir("k").join("kernel.json");
    let mut json = env.read_kernel_json("k");
    json["metadata"]["sshpyk"]["shutdown_timeout"] = "soon".into();
    std::fs::write(&path, json.to_string()).unwrap();
    env.sshpyk().args(["delete", "k"]).assert().success();
    assert!(!path.exists());
    assert!(secret_files(&env).is_empty());
}

/// `mounts remove` while the kernel reconnects: the kernelspec loses the mount, the running
/// kernel keeps it, and the command says so and fails; once the kernel is back, it removes it.
#[tokio::test]
async fn mounts_remove_during_a_reconnection_fails_and_says_which_kernel_keeps_it() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (server, creds, _config) = cloud_support::s3_bucket(&env, "cut");
    let creds_file = write_private(&env, "creds.json", &creds);
    let kernel = env.add_kernel("k", &[]);
    let mnt = env.path("remote-cut");
    add_s3(&env, &kernel, server.port, &creds_file, "cut", &mnt, false)
        .assert()
        .success();
    let (launcher, _) = launch_ready(&env, &kernel, "a");
    env.host().link_down().unwrap();
    launcher.wait_for_log("connection lost, reconnecting", Duration::from_secs(30));
    let out = mounts_remove(&env, &mnt).failure();
    let err = one_line_error(&out);
    assert!(
        err.contains(&format!(
            "the running kernel of launcher {} still has {}",
            launcher.pid(),
            mnt.display()
        )) && err.contains("reconnecting"),
        "{err}"
    );
    assert!(!env
        .read_kernel_json("k")
        .to_string()
        .contains("cloud_mounts"));
    assert!(secret_files(&env).is_empty());
    assert!(is_mounted(&env, &mnt));

    env.host().link_up().unwrap();
    launcher.wait_back();
    mounts_remove(&env, &mnt).success();
    assert!(eventually(CLEANUP, || !is_mounted(&env, &mnt)));
}

/// `sshpyk mounts add` that gives up before the running kernel's mount is made (here: it is
/// killed while the store does not answer): the mount made after all is not kept.
#[tokio::test]
async fn a_mount_made_after_its_add_gave_up_is_not_kept() {
    let env = Env::with_host();
    let (_dav, server, creds, mnt) = dav_store(&env);
    let (launcher, _info) = env.start_kernel(&[]);
    let server_pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(server_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut add = add_dav(&env, server.port, &creds, &mnt, true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    launcher.wait_for_log("(asked while running)", Duration::from_secs(20));
    add.kill().unwrap();
    add.wait().unwrap();
    nix::sys::signal::kill(server_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    launcher.wait_for_log(
        "after `sshpyk mounts add` gave up waiting; unmounting it",
        Duration::from_secs(60),
    );
    assert!(
        eventually(Duration::from_secs(20), || rclone_mounts(&env).is_empty()),
        "{}",
        launcher.log()
    );
}

/// What one mount left free at a remote path, another may take, whatever their kinds: here a
/// removed local dir's path, taken by a cloud store.
#[tokio::test]
async fn a_cloud_mount_takes_the_path_a_removed_local_mount_left_on_a_running_kernel() {
    let env = Env::with_host();
    let local = env.path("project");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("data.txt"), "local\n").unwrap();
    let (dav, webdav, creds, mnt) = dav_store(&env);
    std::fs::write(dav.join("hello.txt"), "over webdav\n").unwrap();
    // Lazy (sshfs): its wrapper removes the mount point it made. A synced copy would stay
    // there, a non-empty directory the cloud mount refuses.
    let spec = format!("{}:{}:lazy", local.display(), mnt.display());
    let (mut launcher, info) = env.start_kernel(&["--mount-local-on-remote", &spec]);
    let mut c = ready_client(&info).await;
    let local_file = print_file(&mnt.join("data.txt"));
    assert_eq!(run(&mut c, &local_file).await, Ok("local\n".into()));

    mounts_remove(&env, &mnt).success();
    let out = add_dav(&env, webdav.port, &creds, &mnt, false)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the path the local mount left is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cloud_file = print_file(&mnt.join("hello.txt"));
    assert_eq!(run(&mut c, &cloud_file).await, Ok("over webdav\n".into()));
    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    let mounts = ps[0]["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{ps}");
    assert_eq!(mounts[0]["kind"], "cloud", "{ps}");
    assert_eq!(mounts[0]["state"], "mounted", "{ps}");
    let spec = &env.read_kernel_json("k")["metadata"]["sshpyk"];
    assert!(spec["mounts"].as_array().unwrap().is_empty(), "{spec}");
    assert_eq!(spec["cloud_mounts"][0]["remote"], mnt.to_str().unwrap());

    cloud_support::shut_down(&mut c, &mut launcher, Duration::from_secs(40)).await;
    assert!(
        eventually(CLEANUP, || rclone_mounts(&env).is_empty()
            && !is_mounted(&env, &mnt)),
        "{} is still mounted",
        mnt.display()
    );
}
