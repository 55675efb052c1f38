//! A running kernel's mounts change without a restart, whatever their kind: what one mount
//! left free at a remote path, another may take, local directory or cloud store alike.

mod common;
#[path = "cloud_support/mod.rs"]
#[allow(dead_code)] // its S3 and Azure helpers are cloud.rs's
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, ready_client, Env};
use sshpyk::jupyter::KernelClient;
use support::{is_mounted, rclone_mounts};

const STEP: Duration = Duration::from_secs(30);
const CLEANUP: Duration = Duration::from_secs(10);

/// Runs `code` in the remote kernel; its stdout, or the error's name and value.
async fn run(c: &mut KernelClient, code: &str) -> Result<String, String> {
    let r = c.execute(code, STEP).await.expect("execute");
    match r.status.as_str() {
        "ok" => Ok(r.stdout),
        _ => Err(format!("{:?}", r.error)),
    }
}

fn read(dir: &Path, name: &str) -> String {
    format!("print(open('{}/{name}').read(), end='')", dir.display())
}

fn write_private(env: &Env, name: &str, text: &str) -> PathBuf {
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `sshpyk mounts add` for kernel "k" of a WebDAV store on the test host at `mnt`.
fn add_dav(env: &Env, port: u16, creds: &Path, mnt: &Path) -> assert_cmd::Command {
    let mut cmd = env.sshpyk();
    cmd.args(["mounts", "add", "--kernel-name", "k", "--backend", "webdav"])
        .arg("--set")
        .arg(format!("url=http://127.0.0.1:{port}/"))
        .args(["--set", "vendor=other", "--set", "user=dav-user"])
        .arg("--creds")
        .arg(creds)
        .arg(mnt);
    cmd
}

fn json_of(cmd: &mut assert_cmd::Command) -> serde_json::Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

#[tokio::test]
async fn a_cloud_mount_takes_the_path_a_removed_local_mount_left_on_a_running_kernel() {
    let env = Env::with_host();
    let local = env.path("project");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("data.txt"), "local\n").unwrap();
    let dav = env.path("dav");
    std::fs::create_dir_all(&dav).unwrap();
    std::fs::write(dav.join("hello.txt"), "over webdav\n").unwrap();
    let webdav = support::webdav_server(&env, &dav, "dav-user", "dav-pass-123");
    let creds = write_private(&env, "dav.json", r#"{"pass": "dav-pass-123"}"#);
    let mnt = env.path("remote-mnt");
    // Lazy (sshfs): its wrapper removes the mount point it made. A synced copy would stay
    // there, a non-empty directory the cloud mount refuses.
    let spec = format!("{}:{}:lazy", local.display(), mnt.display());
    let (mut launcher, info) = env.start_kernel(&["--mount-local-on-remote", &spec]);
    let mut c = ready_client(&info).await;
    assert_eq!(
        run(&mut c, &read(&mnt, "data.txt")).await,
        Ok("local\n".into())
    );

    env.sshpyk()
        .args(["mounts", "remove", "--kernel-name", "k"])
        .arg(&mnt)
        .assert()
        .success();
    let out = add_dav(&env, webdav.port, &creds, &mnt).output().unwrap();
    assert!(
        out.status.success(),
        "the path the local mount left is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(&mut c, &read(&mnt, "hello.txt")).await,
        Ok("over webdav\n".into())
    );
    let ps = json_of(env.sshpyk().args(["ps", "--json"]));
    let mounts = ps[0]["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{ps}");
    assert_eq!(mounts[0]["kind"], "cloud", "{ps}");
    assert_eq!(mounts[0]["state"], "mounted", "{ps}");
    let spec = &env.read_kernel_json("k")["metadata"]["sshpyk"];
    assert!(spec["mounts"].as_array().unwrap().is_empty(), "{spec}");
    assert_eq!(spec["cloud_mounts"][0]["remote"], mnt.to_str().unwrap());

    c.shutdown(false, STEP).await.unwrap();
    let status = launcher
        .wait_timeout(Duration::from_secs(40))
        .expect("launcher exits");
    assert!(status.success(), "{status}: {}", launcher.log());
    assert!(
        eventually(CLEANUP, || rclone_mounts(&env).is_empty()
            && !is_mounted(&env, &mnt)),
        "{} is still mounted",
        mnt.display()
    );
}
