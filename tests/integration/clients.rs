//! Real Jupyter clients (jupyter_client, nbclient, jupyter_server) driving an sshpyk kernel.

use std::process::Output;

use crate::common::{self, Env};

/// Runs `tests/clients/<script>` with the test venv's python and `env`'s Jupyter dirs.
fn run_client_script(env: &Env, script: &str, kernel: &str) -> Output {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(common::venv_python());
    cmd.arg(path).arg(kernel);
    env.apply(&mut cmd);
    cmd.output().unwrap()
}

fn assert_script_succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn jupyter_client_and_nbclient_drive_the_whole_lifecycle() {
    let env = Env::with_host();
    env.add_kernel("ssh_remote", &[]);
    let out = run_client_script(&env, "jupyter_lifecycle.py", "ssh_remote");
    let stdout = assert_script_succeeded(&out);
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

/// The script itself, against a plain local ipykernel: what a working kernel does.
#[test]
fn jupyter_server_websockets_survive_a_restart_of_a_local_kernel() {
    let env = Env::local();
    let spec = env.kernel_dir("local_ipykernel");
    std::fs::create_dir_all(&spec).unwrap();
    let argv = [
        common::venv_python().to_string_lossy().into_owned(),
        "-m".into(),
        "ipykernel_launcher".into(),
        "-f".into(),
        "{connection_file}".into(),
    ];
    let kernel_json = serde_json::json!({
        "argv": argv, "display_name": "local ipykernel", "language": "python",
    });
    std::fs::write(spec.join("kernel.json"), kernel_json.to_string()).unwrap();
    let out = run_client_script(&env, "jupyter_server_restart.py", "local_ipykernel");
    assert_script_succeeded(&out);
}

/// A notebook and a console open on one sshpyk kernel in jupyter_server; after a restart both
/// keep working, and the first code run gets its output.
#[test]
fn jupyter_server_websockets_survive_a_restart_of_an_sshpyk_kernel() {
    let env = Env::with_host();
    env.add_kernel("ssh_remote", &[]);
    let out = run_client_script(&env, "jupyter_server_restart.py", "ssh_remote");
    assert_script_succeeded(&out);
    assert!(
        env.remote_processes("ipykernel").is_empty(),
        "a remote kernel was left behind"
    );
    assert!(env.remote_run_dirs().is_empty());
}

/// JupyterLab's path through a 20 s link cut: a cell run on jupyter_server's websocket gets its
/// reply and all its output (JupyterLab shows its execution count, not `[*]`).
#[test]
fn jupyter_server_websockets_get_a_cells_reply_and_output_through_a_link_cut() {
    let Some(env) = Env::remote_host().build_to_cut() else {
        return;
    };
    env.add_kernel("ssh_remote", &[]);
    let path = format!(
        "{}/tests/clients/jupyter_server_cut.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut cmd = std::process::Command::new(common::venv_python());
    cmd.arg(path).arg("ssh_remote");
    env.apply(&mut cmd);
    let mut script = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(script.stdout.take().unwrap());
    let mut said = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0 {
        said.push_str(&line);
        if line.trim() == "cut" {
            std::thread::sleep(std::time::Duration::from_secs(2));
            env.host().link_down().unwrap();
            std::thread::sleep(std::time::Duration::from_secs(20));
            env.host().link_up().unwrap();
            std::io::Write::write_all(script.stdin.as_mut().unwrap(), b"back\n").unwrap();
        }
        line.clear();
    }
    let out = script.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        said.lines().filter(|l| l.starts_with("ok:")).count(),
        6,
        "{said}"
    );
    assert!(
        env.remote_processes("ipykernel").is_empty(),
        "a remote kernel was left behind"
    );
}

/// README's first command, `scripts/demo`, end to end (its python part, on the binaries this
/// test run built): a kernel through a throwaway sshd runs code, and everything is cleaned up.
#[test]
fn the_demo_runs_end_to_end() {
    let sshpyk = std::path::Path::new(env!("CARGO_BIN_EXE_sshpyk"));
    // Never the real home: the demo keeps its Jupyter and sshpyk dirs in a temp dir already.
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::venv_python())
        .env("HOME", home.path())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.py"))
        .env("SSHPYK_BIN", sshpyk)
        .env(
            "SSHPYK_TESTHOST_BIN",
            sshpyk.with_file_name("sshpyk-testhost"),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = assert_script_succeeded(&out);
    assert!(stdout.contains("hello from pid"), "{stdout}");
    assert!(stdout.contains("all cleaned up."), "{stdout}");
}
