//! The remote supervisor (src/supervisor/*.py) on its own, over pipes: no ssh in between; its cloud
//! mounts (cloud.py) and the Slurm relay (slurm_relay.py) on their own.

use crate::common;

/// Runs `tests/remote/SCRIPT` on `src` and checks it passed `checks` checks ("ok: ...").
fn passes(script: &str, checks: usize) {
    let script = format!("{}/tests/remote/{script}", env!("CARGO_MANIFEST_DIR"));
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
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
        checks,
        "{stdout}"
    );
}

#[test]
fn the_supervisor_speaks_its_protocol_over_pipes() {
    passes("supervisor_test.py", 20);
}

#[test]
fn the_slurm_relay_keeps_the_step_through_a_lost_connection_and_ends_it_with_the_launcher() {
    passes("slurm_relay_test.py", 20);
}

#[test]
fn cloud_mounts_refuse_bad_mount_points_before_running_anything() {
    passes("cloud_test.py", 17);
}
