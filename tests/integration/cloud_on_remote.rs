//! Cloud storage mounted on the remote (rclone there), per backend, end to end: a real sshd
//! "remote host", real S3 (moto, with IAM authentication), WebDAV and Azure (Azurite) servers
//! beside it, SFTP to the host itself, GCS and Dropbox rendered for rclone; the real rclone and
//! FUSE there, a real ipykernel reading and writing through the mount; what reaches the store
//! at `mounts remove`, a shutdown or a SIGKILL. `sshpyk mounts` itself: mounts_command.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cloud_support::{
    self, add_dav, add_s3, assert_clean, dav_store, launch_ready, mounts_remove, print_file, put,
    rclone, rclone_mounts, remote_command_lines, run, secret_files, secrets_dir, shut_down, start,
    store_holds, write_private, CLEANUP, START, STEP,
};
use crate::common::{eventually, json_of, one_line_error, ready_client, Env, Launcher};
use nix::sys::signal::Signal;
use sshpyk::jupyter::KernelClient;
use sshpyk::mounts::cloud_on_remote::{Backend, CloudMount};
use sshpyk_testhost::TestUser;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Whether any file under `dir` contains `secret`.
fn files_containing(dir: &Path, secret: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let path = e.path();
            if path.is_dir() {
                files_containing(&path, secret)
            } else {
                std::fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(secret))
            }
        })
}

/// Starts `kernel` as Jupyter would (connection file `connection`), expecting the start to fail
/// with exit code 5; the launcher's log.
fn failed_start(env: &Env, kernel: &str, connection: &str) -> String {
    let (conn, _) = env.connection_file(connection);
    let mut launcher = env.launch(kernel, &conn);
    let status = launcher.wait_timeout(START).expect("launcher exits");
    assert_eq!(status.code(), Some(5), "{}", launcher.log());
    launcher.log()
}

/// The one `sshpyk: error:` line of a launcher's log.
fn the_error_line(log: &str) -> &str {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("sshpyk: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    errors[0]
}

/// The remote rclone configs hold `secret`, each 0600 in a 0700 directory of its own on
/// /dev/shm; no command line here or there shows it. Returns the rclone mounts.
fn assert_remote_configs_private(
    env: &Env,
    launcher: &Launcher,
    secret: &str,
) -> Vec<(u32, PathBuf)> {
    let mounts = rclone_mounts(env);
    for (_, remote_config) in &mounts {
        assert!(
            remote_config.starts_with("/dev/shm"),
            "{}",
            remote_config.display()
        );
        assert_eq!(mode(remote_config), 0o600);
        assert_eq!(mode(remote_config.parent().unwrap()), 0o700);
        assert!(std::fs::read_to_string(remote_config)
            .unwrap()
            .contains(secret));
    }
    assert!(!remote_command_lines(env).contains(secret));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", launcher.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret));
    mounts
}

/// `ps` and `mounts list` show the S3 test's kernel with its two mounts, `ro` and `rw`.
fn assert_listed_live(env: &Env, launcher: &Launcher, ro: &Path, rw: &Path) {
    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    let row = &ps.as_array().unwrap()[0];
    assert_eq!(row["kernel_name"], "k");
    assert_eq!(row["remote_pid"], launcher.remote_pid());
    assert_eq!(row["state"], "running");
    assert_eq!(row.get("slurm"), Some(&serde_json::Value::Null), "{row}");
    let states: Vec<(String, String)> = row["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["source"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("s3:data/in".to_string(), "mounted".to_string()),
            ("s3:data/out".into(), "mounted".into())
        ]
    );
    let list = env
        .sshpyk()
        .args(["mounts", "list", "--kernel-name", "k"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&list.get_output().stdout).into_owned();
    assert!(
        text.contains(&format!(
            "{}  cloud  s3:data/in  ro  configured",
            ro.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}  cloud  s3:data/out  rw  mounted",
            rw.display()
        )),
        "{text}"
    );
}

/// Kernel `kernel`'s spec names its mounts but holds no `secret`; the `n` secrets files are
/// 0600 in a 0700 directory.
fn assert_secrets_kept_apart(env: &Env, kernel: &str, secret: &str, n: usize) {
    let spec = std::fs::read_to_string(env.kernel_dir(kernel).join("kernel.json")).unwrap();
    assert!(spec.contains("\"cloud_mounts\""), "{spec}");
    assert!(!spec.contains(secret), "{spec}");
    assert_eq!(mode(&secrets_dir(env)), 0o700);
    let files = secret_files(env);
    assert_eq!(files.len(), n);
    for file in &files {
        assert_eq!(mode(file), 0o600);
    }
}

/// Through the kernel, `ro` refuses a write, and a file written in `rw` reaches the bucket
/// (s3:data/out, read with `config`).
async fn assert_ro_refused_and_rw_written_back(
    env: &Env,
    c: &mut KernelClient,
    config: &Path,
    ro: &Path,
    rw: &Path,
) {
    let refused = run(
        c,
        &format!("open('{}/new.txt', 'w').write('x')", ro.display()),
    )
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("Read-only file system")),
        "{refused:?}"
    );
    run(
        c,
        &format!(
            "with open('{}/result.txt', 'w') as f: f.write('from the kernel')",
            rw.display()
        ),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || store_holds(
            env,
            config,
            "s3:data/out/result.txt",
            "from the kernel"
        )),
        "the write never reached the bucket"
    );
}

/// After a run whose launcher logged verbosely: `secret` is in none of its log, in nothing
/// sshpyk wrote here (the kernel's run logs too), in nothing `-vv mounts list` prints; `ps`
/// shows no kernel.
fn assert_secret_left_no_trace(env: &Env, launcher: &Launcher, secret: &str) {
    let log = launcher.log();
    assert!(
        log.contains("DEBUG") && log.contains("debug1:"),
        "logged verbosely:\n{log}"
    );
    assert!(!log.contains(secret));
    assert!(!files_containing(&env.path("rt"), secret));
    let listed = env
        .sshpyk()
        .args(["-vv", "mounts", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(secret));
    assert!(!String::from_utf8_lossy(&listed.stderr).contains(secret));
    let ps = env.sshpyk().args(["ps"]).assert().success();
    assert!(String::from_utf8_lossy(&ps.get_output().stdout).contains("no running sshpyk kernels"));
}

#[tokio::test]
async fn an_s3_bucket_is_read_through_the_kernel_read_only_unless_rw_and_secrets_stay_private() {
    let env = Env::with_host();
    let (server, creds, config) = cloud_support::s3_bucket(&env, "data");
    let secret = serde_json::from_str::<serde_json::Value>(&creds).unwrap()["secret_access_key"]
        .as_str()
        .unwrap()
        .to_string();
    put(&env, &config, "s3:data/in/data.txt", "from s3\n");
    let creds_file = write_private(&env, "creds.json", &creds);
    // The highest verbosity: trace, and ssh's own debug output.
    let kernel = env.add_kernel("k", &["--log-level", "ssh"]);
    let top = env.path("remote-mnt");
    let (ro, rw) = (top.join("ro"), top.join("rw"));
    let add = |source, mnt: &Path, rw| {
        add_s3(&env, &kernel, server.port, &creds_file, source, mnt, rw)
            .assert()
            .success()
    };
    add("data/in", &ro, false).stdout(predicates::str::contains("(read-only)"));
    add("data/out", &rw, true);
    assert_secrets_kept_apart(&env, &kernel, &secret, 2);

    let (mut launcher, mut c) = start(&env, &kernel, "a").await;
    // Mounted before the kernel started.
    assert_eq!(
        run(&mut c, &print_file(&ro.join("data.txt"))).await,
        Ok("from s3\n".into())
    );
    assert_ro_refused_and_rw_written_back(&env, &mut c, &config, &ro, &rw).await;
    // Credentials: in no command line (here or there), no log; the remote config is 0600 in
    // a 0700 directory of its own.
    let mounts = assert_remote_configs_private(&env, &launcher, &secret);
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    // `ps` and `mounts list` see the kernel and its mounts, live.
    assert_listed_live(&env, &launcher, &ro, &rw);

    // A normal shutdown unmounts and removes everything there.
    shut_down(&mut c, &mut launcher, Duration::from_secs(20)).await;
    let configs: Vec<PathBuf> = mounts.iter().map(|(_, c)| c.clone()).collect();
    assert_clean(&env, &[&ro, &rw], &configs, &[&top]);
    assert_secret_left_no_trace(&env, &launcher, &secret);
}

#[tokio::test]
async fn a_bad_cloud_mount_fails_the_start_in_one_line_and_leaves_nothing() {
    let env = Env::with_host();
    let (server, creds) = cloud_support::s3_server(&env);
    let creds_file = write_private(&env, "creds.json", &creds);
    let kernel = env.add_kernel("k", &[]);
    let mnt = env.path("remote-bad/x");
    add_s3(
        &env,
        &kernel,
        server.port,
        &creds_file,
        "nobucket",
        &mnt,
        false,
    )
    .assert()
    .success();
    let log = failed_start(&env, &kernel, "a");
    let error = the_error_line(&log);
    assert!(error.contains("cannot mount s3:nobucket at"), "{log}");
    assert!(error.contains("does not exist"), "{log}");
    assert_clean(&env, &[&mnt], &[], &[&env.path("remote-bad")]);
    assert!(env.remote_processes("ipykernel").is_empty());

    // A mount point that is a non-empty directory is refused, the directory left as it was.
    let full = env.path("remote-full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), "x").unwrap();
    mounts_remove(&env, &mnt).success();
    let config = cloud_support::s3_config(&env, server.port, &creds);
    rclone(&env, &config, &["mkdir", "s3:there"]);
    add_s3(
        &env,
        &kernel,
        server.port,
        &creds_file,
        "there",
        &full,
        false,
    )
    .assert()
    .success();
    let log = failed_start(&env, &kernel, "b");
    assert!(log.contains("is a non-empty directory"), "{log}");
    assert_eq!(std::fs::read_to_string(full.join("keep")).unwrap(), "x");
    assert!(rclone_mounts(&env).is_empty());
}

/// `sshpyk mounts add` for kernel "k" of `served` (a directory of the test host) over SFTP at
/// `mnt`, logged in with the host's key file: a local path, which sshpyk reads and ships.
fn add_sftp(env: &Env, served: &Path, mnt: &Path) {
    let key = env.host().identity_file();
    let creds = write_private(
        env,
        "sftp.json",
        &serde_json::json!({ "key_file": key }).to_string(),
    );
    let host = env.host();
    env.sshpyk()
        .args(["mounts", "add", "--kernel-name", "k", "--backend", "sftp"])
        .arg("--set")
        .arg(format!("host={}", host.address()))
        .arg("--set")
        .arg(format!("port={}", host.port()))
        .arg("--set")
        .arg(format!("user={}", host.login_user()))
        .arg("--creds")
        .arg(&creds)
        .arg("--source")
        .arg(served)
        .arg(mnt)
        .assert()
        .success();
}

#[tokio::test]
async fn webdav_with_a_password_and_sftp_with_a_key_file_mount_through_the_kernel() {
    let env = Env::with_host();
    let (dav, webdav, dav_creds, dav_mnt) = dav_store(&env);
    std::fs::write(dav.join("hello.txt"), "over webdav\n").unwrap();
    let served = env.path("sftp-served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::write(served.join("hello.txt"), "over sftp\n").unwrap();
    let kernel = env.add_kernel("k", &[]);
    let sftp_mnt = env.path("remote-sftp");
    assert_cmd::Command::from_std(add_dav(&env, webdav.port, &dav_creds, &dav_mnt, true))
        .assert()
        .success();
    add_sftp(&env, &served, &sftp_mnt);
    let spec = std::fs::read_to_string(env.kernel_dir(&kernel).join("kernel.json")).unwrap();
    assert!(
        !spec.contains("dav-pass-123") && !spec.contains("PRIVATE KEY"),
        "{spec}"
    );

    let (mut launcher, mut c) = start(&env, &kernel, "a").await;
    let read = |dir: &Path| print_file(&dir.join("hello.txt"));
    assert_eq!(
        run(&mut c, &read(&dav_mnt)).await,
        Ok("over webdav\n".into())
    );
    assert_eq!(
        run(&mut c, &read(&sftp_mnt)).await,
        Ok("over sftp\n".into())
    );
    run(
        &mut c,
        &format!(
            "with open('{}/back.txt', 'w') as f: f.write('written over webdav')",
            dav_mnt.display()
        ),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(
            dav.join("back.txt")
        )
        .is_ok_and(|t| t == "written over webdav")),
        "the write never reached the WebDAV server"
    );
    // The password is obscured in the remote config (as rclone keeps it), and in no command line.
    for (_, config) in rclone_mounts(&env) {
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(!text.contains("dav-pass-123"));
    }
    // (Only the test's own WebDAV server has it on its command line.)
    assert!(!remote_command_lines(&env)
        .lines()
        .any(|l| l.contains("dav-pass-123") && !l.contains("serve webdav")));
    shut_down(&mut c, &mut launcher, Duration::from_secs(20)).await;
    assert_clean(&env, &[&dav_mnt, &sftp_mnt], &[], &[&dav_mnt, &sftp_mnt]);
}

/// The config sshpyk renders for a `backend` mount with `creds` and `settings`, as rclone reads
/// it back (`rclone config show`).
fn rendered_as_rclone_reads_it(
    env: &Env,
    backend: Backend,
    creds: serde_json::Value,
    settings: &[(&str, &str)],
) -> String {
    let creds = serde_json::from_value(creds).unwrap();
    let secrets = CloudMount::read_creds(backend, creds).unwrap();
    let mount = CloudMount {
        remote: "/mnt/x".into(),
        backend,
        source: "bucket".into(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        rw: false,
        rclone_flags: vec![],
        secrets: String::new(),
    };
    let rendered = mount.render(&secrets).unwrap();
    let file = write_private(env, "render.conf", &rendered.config);
    cloud_support::run_ok(
        std::process::Command::new("rclone")
            .args(["config", "show", "--config"])
            .arg(&file)
            .arg("sshpyk"),
    )
}

/// gcs and dropbox have no server here: their rendered configs are checked with rclone itself,
/// and a start against the real service fails in one clear line.
#[tokio::test]
async fn gcs_and_dropbox_render_as_rclone_reads_them_and_fail_in_one_line() {
    let env = Env::with_host();
    let sa = serde_json::json!({
        "type": "service_account", "project_id": "p", "private_key_id": "1",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        "client_email": "sa@p.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token"
    });
    let sa_file = write_private(&env, "sa.json", &serde_json::to_string_pretty(&sa).unwrap());
    let token = r#"{"access_token":"sl.x","token_type":"bearer","expiry":"0001-01-01T00:00:00Z"}"#;
    let shown = rendered_as_rclone_reads_it(
        &env,
        Backend::Gcs,
        serde_json::json!({ "service_account_file": sa_file }),
        &[("project_number", "12345")],
    );
    assert!(
        shown.contains("type = google cloud storage") || shown.contains("type = gcs"),
        "{shown}"
    );
    assert!(shown.contains("project_number = 12345"), "{shown}");
    let line = shown
        .lines()
        .find_map(|l| l.strip_prefix("service_account_credentials = "))
        .unwrap_or_else(|| panic!("{shown}"));
    let back: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(back, sa);
    let dropbox = serde_json::json!({ "token": token });
    let shown = rendered_as_rclone_reads_it(&env, Backend::Dropbox, dropbox.clone(), &[]);
    assert!(shown.contains("type = dropbox"), "{shown}");
    assert!(shown.contains(&format!("token = {token}")), "{shown}");

    // A start against the service (unreachable from the test host): one line, nothing left.
    let kernel = env.add_kernel("k", &[]);
    let creds = write_private(&env, "dropbox.json", &dropbox.to_string());
    let mnt = env.path("remote-dropbox");
    env.sshpyk()
        .args([
            "mounts",
            "add",
            "--kernel-name",
            &kernel,
            "--backend",
            "dropbox",
            "--creds",
        ])
        .arg(&creds)
        .arg(&mnt)
        .assert()
        .success();
    let log = failed_start(&env, &kernel, "a");
    let error = the_error_line(&log);
    assert!(error.contains("cannot mount dropbox: at"), "{log}");
    eprintln!("the live dropbox attempt: {error}");
    assert!(!log.contains("sl.x"), "{log}");
    assert_clean(&env, &[&mnt], &[], &[&mnt]);
}

#[tokio::test]
async fn an_azure_container_on_azurite_is_read_through_the_kernel_and_a_bad_signature_refused() {
    let env = Env::with_host();
    let (server, sas_url) = cloud_support::azurite(&env);
    let config = env.path("azure-test.conf");
    std::fs::write(
        &config,
        format!("[az]\ntype = azureblob\nsas_url = {sas_url}\n"),
    )
    .unwrap();
    rclone(&env, &config, &["mkdir", "az:cont"]);
    put(&env, &config, "az:cont/data.txt", "from azure\n");
    let creds = write_private(
        &env,
        "az.json",
        &serde_json::json!({ "sas_url": sas_url }).to_string(),
    );
    let (launcher, info) = env.start_kernel(&[]);
    let mut c = ready_client(&info).await;
    let mnt = env.path("remote-azure");
    let add = |creds: &Path, mnt: &Path| {
        let mut cmd = env.sshpyk();
        cmd.args([
            "mounts",
            "add",
            "--kernel-name",
            "k",
            "--backend",
            "azureblob",
            "--source",
            "cont",
            "--creds",
        ])
        .arg(creds)
        .arg(mnt);
        cmd
    };
    add(&creds, &mnt).assert().success();
    assert_eq!(
        run(&mut c, &print_file(&mnt.join("data.txt"))).await,
        Ok("from azure\n".into())
    );
    let bad = write_private(
        &env,
        "az-bad.json",
        &serde_json::json!({ "sas_url": cloud_support::azure_sas(server.port, true) }).to_string(),
    );
    let other = env.path("remote-azure-bad");
    let out = add(&bad, &other).assert().code(5);
    let err = one_line_error(&out);
    assert!(
        err.contains("refused the credentials for azureblob:cont"),
        "{err}"
    );
    assert!(err.contains("403"), "{err}");
    assert!(!other.exists());
    drop(launcher);
}

#[tokio::test]
async fn a_raw_rclone_config_mount_rides_out_a_link_cut_and_ps_says_reconnecting_meanwhile() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    let (_server, _creds, config) = cloud_support::s3_bucket(&env, "cut");
    put(&env, &config, "s3:cut/data.txt", "kept\n");
    env.add_kernel("k", &[]);
    let mnt = env.path("remote-cut");
    // A raw rclone config this time (any backend): the test's own.
    env.sshpyk()
        .args(["mounts", "add", "--kernel-name", "k", "--rclone-config"])
        .arg(&config)
        .args(["--source", "s3:cut"])
        .arg(&mnt)
        .assert()
        .success();
    let (launcher, info) = launch_ready(&env, "k", "a");
    let rclone_before = rclone_mounts(&env);
    let read = print_file(&mnt.join("data.txt"));

    env.host().link_down().unwrap();
    launcher.wait_for_log("connection lost, reconnecting", Duration::from_secs(30));
    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    assert_eq!(ps[0]["state"], "reconnecting", "{ps}");
    assert_eq!(ps[0]["mounts"][0]["state"], "unknown", "{ps}");
    env.host().link_up().unwrap();
    launcher.wait_back();

    // The supervisor kept the mount: the same rclone, still serving the kernel.
    assert_eq!(rclone_mounts(&env), rclone_before);
    let mut c = ready_client(&info).await;
    assert_eq!(run(&mut c, &read).await, Ok("kept\n".into()));
    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    assert_eq!(ps[0]["state"], "running", "{ps}");
    assert_eq!(ps[0]["mounts"][0]["state"], "mounted", "{ps}");
}

/// Another user, without root: rclone mounts through the setuid fusermount3, its private
/// directory on /dev/shm is that user's own.
#[tokio::test]
async fn a_user_without_root_mounts_and_writes_back() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the second test user needs root");
        return;
    }
    let env = Env::remote_host().user(TestUser::Chatty).build();
    let (server, creds, config) = cloud_support::s3_bucket(&env, "user");
    put(&env, &config, "s3:user/data.txt", "for the user\n");
    let creds_file = write_private(&env, "creds.json", &creds);
    env.add_kernel("k", &[]);
    // Somewhere that user may create a directory.
    let top = PathBuf::from(format!("/tmp/sshpyk-cloud-test-{}", uuid::Uuid::new_v4()));
    let mnt = top.join("bucket");
    add_s3(&env, "k", server.port, &creds_file, "user", &mnt, true)
        .assert()
        .success();
    let (mut launcher, mut c) = start(&env, "k", "a").await;
    let m = mnt.display();
    assert_eq!(
        run(&mut c, &print_file(&mnt.join("data.txt"))).await,
        Ok("for the user\n".into())
    );
    run(
        &mut c,
        &format!("with open('{m}/data.txt', 'a') as f: f.write('appended\\n')"),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || store_holds(
            &env,
            &config,
            "s3:user/data.txt",
            "for the user\nappended\n"
        )),
        "the append never reached the bucket"
    );
    let (uid, _) = env.host().login_ids();
    let mounts = rclone_mounts(&env);
    assert_eq!(mounts.len(), 1);
    let home = env.host().dir().join("home").join(env.host().login_user());
    let cache = cache_dir_of(mounts[0].0);
    assert!(
        cache.starts_with(home.join(".cache/sshpyk/rclone")),
        "{}",
        cache.display()
    );
    let private = mounts[0].1.parent().unwrap().to_owned();
    let name = private.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        private.parent() == Some(Path::new("/dev/shm"))
            && name.starts_with(&format!("sshpyk-{uid}-")),
        "{}",
        private.display()
    );
    let meta = std::fs::metadata(&private).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::uid(&meta), mode(&private)),
        (uid.as_raw(), 0o700)
    );
    shut_down(&mut c, &mut launcher, Duration::from_secs(20)).await;
    let configs: Vec<PathBuf> = mounts.into_iter().map(|(_, c)| c).collect();
    assert_clean(&env, &[&mnt], &configs, &[&top]);
    // The cache dir of this test's store is emptied by the upload (its lock is left).
    assert!(!cache.exists(), "{}", cache.display());
    std::fs::remove_file(cache.with_extension("lock")).unwrap();
    for dir in cache.ancestors().skip(1).take(3) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The `--cache-dir` of an rclone process.
fn cache_dir_of(pid: u32) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args.iter().position(|a| *a == b"--cache-dir").unwrap();
    PathBuf::from(String::from_utf8_lossy(args[at + 1]).into_owned())
}

/// The parent of a remote process.
fn parent_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(1).unwrap().parse().unwrap()
}

/// What the kernel wrote just before `mounts remove` or a shutdown reaches the store before
/// either returns: unmounting waits for rclone's uploads.
#[tokio::test]
async fn writes_just_before_mounts_remove_or_a_shutdown_reach_webdav() {
    let env = Env::with_host();
    let (dav, webdav, creds, mnt) = dav_store(&env);
    let add = || assert_cmd::Command::from_std(add_dav(&env, webdav.port, &creds, &mnt, true));
    let write = |name: &str| {
        format!(
            "with open('{}/{name}', 'w') as f: f.write('{name} from the kernel')",
            mnt.display()
        )
    };
    let stored = |name: &str| std::fs::read_to_string(dav.join(name)).ok();
    let remove = || {
        mounts_remove(&env, &mnt).success();
    };
    // Every child of a remote process reaped: no `[rclone] <defunct>` (a zombie's own /proc
    // entry no longer tells whose namespace it is in; its parent's does).
    let zombies = || {
        let remote = env.host().remote_pids();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter_map(|stat| {
                let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
                let ppid: u32 = fields.get(1)?.parse().ok()?;
                (fields[0] == "Z" && remote.contains(&ppid)).then_some(stat)
            })
            .collect::<Vec<_>>()
    };
    env.add_kernel("k", &[]);
    add().assert().success();
    let (mut launcher, mut c) = start(&env, "k", "a").await;

    // The rclone mounted at the start dies: reaped at once, not when someone asks for its state.
    let (rclone_pid, _) = rclone_mounts(&env)[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rclone_pid as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || zombies().is_empty()),
        "{:?}",
        zombies()
    );
    remove();

    add().assert().success();
    run(&mut c, &write("removed.csv")).await.unwrap();
    remove();
    assert_eq!(
        stored("removed.csv").as_deref(),
        Some("removed.csv from the kernel")
    );
    assert!(zombies().is_empty(), "{:?}", zombies());

    add().assert().success();
    run(&mut c, &write("shutdown.csv")).await.unwrap();
    shut_down(&mut c, &mut launcher, Duration::from_secs(40)).await;
    assert_eq!(
        stored("shutdown.csv").as_deref(),
        Some("shutdown.csv from the kernel")
    );
    assert_clean(&env, &[&mnt], &[], &[&mnt]);
    // Everything uploaded: rclone's cache keeps no copies (only its lock).
    let cache = env.path("remote-home/.cache/sshpyk/rclone");
    let left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A SIGKILLed launcher: its supervisor uploads before unmounting. The supervisor SIGKILLed
/// too: rclone ends before uploading, the file stays in the store's cache dir, and the next
/// start uploads it and removes the dead supervisor's config dir (it holds the credentials).
#[tokio::test]
async fn writes_before_a_sigkill_reach_s3_at_once_or_at_the_next_start() {
    let env = Env::with_host();
    let (server, creds, config) = cloud_support::s3_bucket(&env, "kill");
    let creds_file = write_private(&env, "creds.json", &creds);
    let kernel = env.add_kernel("k", &[]);
    let mnt = env.path("remote-kill");
    add_s3(&env, &kernel, server.port, &creds_file, "kill", &mnt, true)
        .assert()
        .success();
    let write = |name: &str| {
        format!(
            "with open('{}/{name}', 'w') as f: f.write('{name} from the kernel')",
            mnt.display()
        )
    };
    let in_bucket = |name: &str| {
        let text = format!("{name} from the kernel");
        store_holds(&env, &config, &format!("s3:kill/{name}"), &text)
    };

    let (mut launcher, mut c) = start(&env, &kernel, "a").await;
    run(&mut c, &write("killed.csv")).await.unwrap();
    c.close();
    launcher.signal(Signal::SIGKILL);
    launcher.wait_timeout(CLEANUP).expect("killed");
    assert!(
        eventually(Duration::from_secs(40), || rclone_mounts(&env).is_empty()),
        "rclone left running"
    );
    assert!(
        in_bucket("killed.csv"),
        "the write never reached the bucket"
    );
    assert_clean(&env, &[&mnt], &[], &[&mnt]);

    let (mut launcher, mut c) = start(&env, &kernel, "b").await;
    let (rclone_pid, dead_config) = rclone_mounts(&env)[0].clone();
    let supervisor = parent_of(rclone_pid);
    run(&mut c, &write("crashed.csv")).await.unwrap();
    c.close();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), Signal::SIGKILL).unwrap();
    launcher.signal(Signal::SIGKILL);
    launcher.wait_timeout(CLEANUP).expect("killed");
    assert!(
        eventually(CLEANUP, || rclone_mounts(&env).is_empty()),
        "rclone outlived its supervisor"
    );
    assert!(dead_config.exists(), "nothing left for the sweep to do");

    let (mut launcher, info) = launch_ready(&env, &kernel, "c");
    assert!(
        eventually(Duration::from_secs(20), || in_bucket("crashed.csv")),
        "the leftover never reached the bucket"
    );
    assert!(!dead_config.parent().unwrap().exists());
    let mut c = ready_client(&info).await;
    shut_down(&mut c, &mut launcher, Duration::from_secs(40)).await;
    let configs: Vec<PathBuf> = rclone_mounts(&env).into_iter().map(|(_, c)| c).collect();
    assert_clean(&env, &[&mnt], &configs, &[]);
}

/// The store unreachable at shutdown: the supervisor waits its bound, says in the launcher's log
/// which files stay pending and where, and the next start, with the store back, uploads them.
#[tokio::test]
async fn writes_the_store_cannot_take_at_shutdown_are_kept_and_uploaded_by_the_next_start() {
    let env = Env::with_host();
    let (dav, server, creds, mnt) = dav_store(&env);
    let port = server.port;
    // The wait for uploads is bounded by the kernel's shutdown timeout.
    env.add_kernel("k", &["--shutdown-timeout", "5"]);
    assert_cmd::Command::from_std(add_dav(&env, port, &creds, &mnt, true))
        .assert()
        .success();
    let (mut launcher, mut c) = start(&env, "k", "a").await;
    run(
        &mut c,
        &format!(
            "with open('{}/late.csv', 'w') as f: f.write('late')",
            mnt.display()
        ),
    )
    .await
    .unwrap();
    // Gone before rclone's write-back (1 s): `ps` shows the upload pending.
    drop(server);
    let ps = env.sshpyk().arg("ps").output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("1 upload(s) pending"), "{ps}");
    c.shutdown(false, STEP).await.unwrap();
    // The supervisor answers pings while it waits: the launcher hears the kernel's exit.
    let stopping = std::time::Instant::now();
    let status = launcher
        .wait_timeout(Duration::from_secs(60))
        .expect("launcher exits");
    assert!(status.success(), "{}", launcher.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    let log = launcher.log();
    assert!(
        log.contains(&format!(
            "sshpyk: 1 file(s) written to {} not uploaded to",
            mnt.display()
        )) && log.contains("(late.csv); kept in"),
        "{log}"
    );
    assert!(!dav.join("late.csv").exists());
    assert_clean(&env, &[&mnt], &[], &[&mnt]);

    let _server = cloud_support::webdav_server_on(&env, &dav, "dav-user", "dav-pass-123", port);
    let (mut launcher, info) = launch_ready(&env, "k", "b");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(
            dav.join("late.csv")
        )
        .is_ok_and(|t| t == "late")),
        "the kept file never reached the store"
    );
    let mut c = ready_client(&info).await;
    shut_down(&mut c, &mut launcher, Duration::from_secs(40)).await;
    assert_clean(&env, &[&mnt], &[], &[&mnt]);
}

/// Another user of the remote made `/dev/shm/sshpyk-<uid>` first (the name a config dir once
/// had): a kernel with a cloud mount still starts and reads it, since the private dirs are
/// made with unpredictable names.
#[tokio::test]
async fn a_squatted_shm_name_on_the_remote_stops_no_cloud_mount() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making a directory another user owns needs root");
        return;
    }
    let env = Env::with_host();
    let squat = PathBuf::from(format!("/dev/shm/sshpyk-{}", nix::unistd::geteuid()));
    let made = std::fs::create_dir(&squat).is_ok();
    if made {
        std::os::unix::fs::chown(&squat, Some(65534), Some(65534)).unwrap();
    }
    let (dav, server, creds, mnt) = dav_store(&env);
    std::fs::write(dav.join("data.txt"), "from the store\n").unwrap();
    env.add_kernel("k", &[]);
    assert_cmd::Command::from_std(add_dav(&env, server.port, &creds, &mnt, false))
        .assert()
        .success();
    let (mut launcher, mut c) = start(&env, "k", "a").await;
    let read = print_file(&mnt.join("data.txt"));
    let got = run(&mut c, &read).await;
    c.shutdown(false, STEP).await.unwrap();
    launcher
        .wait_timeout(Duration::from_secs(30))
        .expect("exits");
    if made {
        std::fs::remove_dir(&squat).unwrap();
    }
    assert_eq!(got, Ok("from the store\n".into()), "{}", launcher.log());
}
