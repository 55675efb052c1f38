//! Real Jupyter clients (jupyter_client, nbclient) driving an sshpyk kernel.

mod common;

use common::Env;

#[test]
fn jupyter_client_and_nbclient_drive_the_whole_lifecycle() {
    let env = Env::with_host();
    env.add_kernel("ssh_remote", &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/jupyter_lifecycle.py"
    );
    let mut cmd = std::process::Command::new(common::venv_python());
    cmd.arg(script).arg("ssh_remote");
    env.apply(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok:")).count(),
        7,
        "{stdout}"
    );
    assert!(
        env.remote_processes("ipykernel").is_empty(),
        "a remote kernel was left behind"
    );
    assert!(env.remote_run_dirs().is_empty());
}
