//! The remote supervisor (src/remote/*.py) on its own, over pipes: no ssh in between; its cloud
//! mounts (cloud.py) on their own.

mod common;

#[test]
fn the_supervisor_speaks_its_protocol_over_pipes() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/remote/supervisor_test.py"
    );
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/remote");
    let out = std::process::Command::new(common::venv_python())
        .arg(script)
        .arg(src)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok:")).count(),
        13,
        "{stdout}"
    );
}

#[test]
fn cloud_mounts_refuse_bad_mount_points_before_running_anything() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/remote/cloud_test.py");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/remote");
    let out = std::process::Command::new(common::venv_python())
        .arg(script)
        .arg(src)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok:")).count(),
        12,
        "{stdout}"
    );
}
