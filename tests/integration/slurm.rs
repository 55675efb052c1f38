//! Kernels on a Slurm compute node, through the login node, on a real single-node Slurm
//! (slurm-wlm + munge from Debian, its daemons in the test host's network namespace).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{eventually, interrupt_busy_kernel, json_of, ready_client, Env, Launcher};
use nix::sys::signal::Signal;
use sshpyk::jupyter::connection::ConnectionInfo;
use sshpyk_testhost::{SLURM_NODE, SLURM_PARTITION};

const STEP: Duration = Duration::from_secs(20);
const GRACE: u64 = 4;

fn slurm_env() -> Option<Env> {
    if !nix::unistd::geteuid().is_root() || !sshpyk_testhost::slurm_installed() {
        eprintln!("skipped: Slurm tests need root and slurm-wlm + munge (scripts/setup)");
        return None;
    }
    Some(Env::remote_host().slurm().build())
}

/// `squeue` on the login node: "id name state" per job.
fn jobs(env: &Env) -> Vec<String> {
    let out = env
        .host()
        .remote_command("squeue", ["-h", "-o", "%i %j %T"])
        .env("SLURM_CONF", env.path("slurm/slurm.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// `sshpyk ps`, human and JSON, shows the one running kernel in `job` on the node.
fn assert_ps_shows(env: &Env, job: &str) {
    let rows = json_of(env.sshpyk().args(["ps", "--json"]));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["slurm"],
        serde_json::json!({"job_id": job, "node": SLURM_NODE}),
        "{rows:?}"
    );
    let out = env.sshpyk().arg("ps").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains(&format!("\n  slurm job {job} on node {SLURM_NODE}\n")),
        "{text}"
    );
}

fn add_slurm_kernel(env: &Env, options: &str, extra: &[&str]) {
    let mut args = vec!["--slurm", options, "--slurm-grace", "4"];
    args.extend_from_slice(extra);
    env.add_kernel("k", &args);
}

/// Kernel "k" in a 10-minute job on the test partition, started as Jupyter would with
/// connection file `name`: see [`launch_ready`].
fn start_in_a_job(env: &Env, name: &str) -> (Launcher, PathBuf, ConnectionInfo) {
    add_slurm_kernel(
        env,
        &format!("--partition {SLURM_PARTITION} --time 10"),
        &[],
    );
    launch_ready(env, name)
}

/// Starts kernel "k" as Jupyter would with connection file `name`, up to "ready": the
/// launcher, the connection file and what it says.
fn launch_ready(env: &Env, name: &str) -> (Launcher, PathBuf, ConnectionInfo) {
    let (conn, info) = env.connection_file(name);
    let mut launcher = env.launch("k", &conn);
    launcher.wait_ready(Duration::from_secs(60));
    (launcher, conn, info)
}

/// Starts kernel "k" with `conn`, which gives up within 20 s: its exit code and log.
fn launch_failing(env: &Env, conn: &Path) -> (Option<i32>, String) {
    let mut launcher = env.launch("k", conn);
    let status = launcher
        .wait_timeout(Duration::from_secs(20))
        .expect("gave up in time");
    (status.code(), launcher.log())
}

#[tokio::test]
async fn a_kernel_runs_in_a_job_step_restarts_into_the_same_job_and_the_job_ends_after_the_grace() {
    let Some(env) = slurm_env() else { return };
    add_slurm_kernel(
        &env,
        &format!("--partition {SLURM_PARTITION} --time 10"),
        &[],
    );
    // `list` finds Slurm's commands on the login node.
    let list = env.sshpyk().arg("list").assert().success();
    let text = String::from_utf8_lossy(&list.get_output().stdout).into_owned();
    let row = text
        .lines()
        .find_map(|l| l.strip_prefix("    (v) slurm commands: "))
        .unwrap_or_else(|| panic!("no slurm commands row: {text}"));
    let paths: Vec<&str> = row.split(", ").collect();
    assert_eq!(paths.len(), 4, "{row}");
    for (path, name) in paths.iter().zip(["sbatch", "srun", "squeue", "scancel"]) {
        assert!(
            path.ends_with(&format!("/{name}")) && Path::new(path).is_file(),
            "{row}"
        );
    }
    // The relay runs in the kernel's python, which the login node shares.
    let python = env.remote_venv.join("bin/python");
    assert!(
        text.contains(&format!(
            "\n    (v) slurm relay: {} runs the relay on the login node\n",
            python.display()
        )),
        "{text}"
    );
    let (mut launcher, conn, info) = launch_ready(&env, "slurmk");
    let log = launcher.log();
    assert!(
        log.contains(&format!("running on node {SLURM_NODE}")),
        "{log}"
    );
    let job = job_in(&log);
    assert_eq!(jobs(&env), [format!("{job} sshpyk-slurmk RUNNING")]);
    assert_ps_shows(&env, &job);

    // The kernel runs inside a job step on the node.
    let mut c = ready_client(&info).await;
    let r = c
        .execute(
            "import os; print(os.environ['SLURMD_NODENAME'], os.environ['SLURM_JOB_ID'], os.environ.get('SLURM_STEP_ID'))",
            STEP,
        )
        .await
        .unwrap();
    let fields: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(&fields[..2], [SLURM_NODE, job.as_str()], "{}", r.stdout);
    assert_ne!(fields[2], "batch");

    // Interrupt.
    let mut other = ready_client(&info).await;
    interrupt_busy_kernel(c, &launcher).await;
    let r = other.execute("print(1 + 1)", STEP).await.unwrap();
    assert_eq!(r.stdout, "2\n");
    other.close();

    // Restart (Jupyter: SIGTERM, then the same connection file): the same job, no queueing.
    launcher.signal(Signal::SIGTERM);
    assert!(launcher.wait_timeout(Duration::from_secs(5)).is_some());
    let mut launcher = env.launch("k", &conn);
    launcher.wait_ready(Duration::from_secs(60));
    let log = launcher.log();
    assert!(log.contains(&format!("adopting slurm job {job}")), "{log}");
    assert!(!log.contains("submitted"), "{log}");
    assert_ps_shows(&env, &job);
    let mut c = ready_client(&info).await;
    let r = c.execute("print(1 + 1)", STEP).await.unwrap();
    assert_eq!(r.stdout, "2\n");
    c.close();

    // Jupyter's SIGKILL: the kernel is gone at once, the job after the grace.
    sigkill_ends_the_kernel_now_and_the_job_after_the_grace(&env, &mut launcher);
}

/// Jupyter's SIGKILL of the launcher: the kernel is gone at once, the job only after the grace.
fn sigkill_ends_the_kernel_now_and_the_job_after_the_grace(env: &Env, launcher: &mut Launcher) {
    launcher.child.kill().unwrap();
    launcher.child.wait().unwrap();
    let killed = Instant::now();
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(5)),
        "the kernel outlived its launcher"
    );
    assert_eq!(jobs(env).len(), 1, "the job must wait for the grace");
    assert!(
        eventually(Duration::from_secs(GRACE + 15), || jobs(env).is_empty()),
        "job still there: {:?}",
        jobs(env)
    );
    assert!(killed.elapsed() >= Duration::from_secs(GRACE - 1));
}

/// The job id from the launcher's log ("slurm job N ...").
fn job_in(log: &str) -> String {
    log.split("slurm job ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a job id in the log")
        .to_string()
}

/// Cuts the link for `secs`; with `drop_connections`, the server also drops every connection
/// meanwhile (sshd's processes go, so the relay sees its session end with its connection).
async fn cut_link(env: &Env, secs: u64, drop_connections: bool) {
    env.host().link_down().unwrap();
    if drop_connections {
        assert!(env.host().kill_sshd_connections().unwrap() > 0);
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    env.host().link_up().unwrap();
}

#[tokio::test]
async fn a_network_drop_keeps_the_kernel_in_its_job_and_a_launcher_killed_after_it_still_ends_it() {
    let Some(env) = slurm_env() else { return };
    let (mut launcher, _, info) = start_in_a_job(&env, "slurmnet");
    let job = job_in(&launcher.log());
    let pid = launcher.remote_pid();
    let mut c = ready_client(&info).await;
    c.execute("x = 42", STEP).await.unwrap();

    // A silent cut long enough for the launcher to give its connection up (the old session
    // never ends on the login node: the new one takes over from it), then one where the server
    // drops the connections (the relay sees its session end with its sshd). Each time a cell
    // prints through the cut: its streams resume through the relay, so it ends in its client
    // with all its output.
    let cell = "import time\nfor i in range(12):\n    print(i, flush=True)\n    time.sleep(1)";
    for (round, secs, drop_connections) in [(1, 20, false), (2, 5, true)] {
        let cut = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cut_link(&env, secs, drop_connections).await
        };
        let (r, ()) = tokio::join!(c.execute(cell, Duration::from_secs(90)), cut);
        let r = r.unwrap_or_else(|e| panic!("cut {round}: {e}\n{}", launcher.log()));
        let lines: String = (0..12).map(|i| format!("{i}\n")).collect();
        assert_eq!((r.status.as_str(), r.stdout), ("ok", lines), "cut {round}");
        assert!(
            launcher.child.try_wait().unwrap().is_none(),
            "the launcher exited after cut {round}:\n{}",
            launcher.log()
        );
        assert!(
            eventually(Duration::from_secs(20), || launcher
                .log()
                .matches("reconnected after")
                .count()
                == round),
            "not reconnected after cut {round}:\n{}",
            launcher.log()
        );
        // The same kernel, its state kept, on the same ports, in the same job.
        let mut c = ready_client(&info).await;
        let r = c
            .execute("print(x, __import__('os').getpid())", STEP)
            .await
            .unwrap();
        assert_eq!(r.stdout, format!("42 {pid}\n"), "{}", launcher.log());
        c.close();
        assert_eq!(jobs(&env), [format!("{job} sshpyk-slurmnet RUNNING")]);
        assert_ps_shows(&env, &job);
    }
    c.close();

    // Jupyter's SIGKILL over the new connection: the kernel is gone at once, the job after
    // the grace.
    sigkill_ends_the_kernel_now_and_the_job_after_the_grace(&env, &mut launcher);
    assert!(env.remote_processes("sshpyk-relay").is_empty());
}

#[tokio::test]
async fn a_lease_run_out_with_the_link_down_ends_the_kernel_and_cancels_the_job_at_once() {
    let Some(env) = slurm_env() else { return };
    // A grace far longer than the test: only a cancel ends the job in time.
    env.add_kernel(
        "k",
        &[
            "--slurm",
            &format!("--partition {SLURM_PARTITION} --time 10"),
            "--slurm-grace",
            "600",
            "--orphan-timeout",
            "4",
        ],
    );
    let (mut launcher, _, _info) = launch_ready(&env, "slurmlease");
    let job = job_in(&launcher.log());
    assert_eq!(jobs(&env), [format!("{job} sshpyk-slurmlease RUNNING")]);

    env.host().link_down().unwrap();
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(30)),
        "the lease did not end the kernel"
    );
    assert!(
        eventually(Duration::from_secs(10), || jobs(&env).is_empty()),
        "job not cancelled: {:?}",
        jobs(&env)
    );
    assert!(env.remote_processes("sshpyk-relay").is_empty());
    env.host().link_up().unwrap();
    launcher.assert_gives_up_on_a_gone_kernel();
}

/// The relay's pid among `relays` (the processes with its source): the child of the process that
/// waits for it.
fn relay_among(relays: &[u32]) -> u32 {
    let parent = |pid: u32| -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let relay = relays
        .iter()
        .copied()
        .filter(|&pid| relays.contains(&parent(pid)));
    let relay: Vec<u32> = relay.collect();
    assert_eq!(relay.len(), 1, "{relays:?}");
    relay[0]
}

/// The relay's socket, from the Unix sockets of its network namespace.
fn relay_socket(relay: u32) -> PathBuf {
    let table = std::fs::read_to_string(format!("/proc/{relay}/net/unix")).unwrap();
    let mut sockets: Vec<&str> = table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter(|path| path.contains("/sshpyk-relay-"))
        .collect();
    sockets.dedup();
    assert_eq!(sockets.len(), 1, "{table}");
    PathBuf::from(sockets[0])
}

#[tokio::test]
async fn a_relay_killed_leaves_no_socket_dir_and_its_kernel_and_job_end() {
    let Some(env) = slurm_env() else { return };
    let (mut launcher, _, _info) = start_in_a_job(&env, "slurmrelay");
    let relay = relay_among(&env.remote_processes("sshpyk-relay"));
    let socket = relay_socket(relay);
    let dir = socket.parent().unwrap().to_path_buf();
    assert!(socket.exists(), "{}", socket.display());

    // SIGKILL: the relay cannot clean up, the process waiting for it does.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(relay as i32), Signal::SIGKILL).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !dir.exists()),
        "{} outlived its relay",
        dir.display()
    );
    // The waiting process exits right after it removed the dir.
    assert!(
        env.remote_processes_end("sshpyk-relay", Duration::from_secs(5)),
        "a relay process is left"
    );
    // The step's stdin ended with the relay: the kernel ends, the job after the grace.
    assert!(
        env.remote_processes_end("ipykernel", Duration::from_secs(10)),
        "the kernel outlived its relay"
    );
    launcher.assert_gives_up_on_a_gone_kernel();
    assert!(
        eventually(Duration::from_secs(GRACE + 15), || jobs(&env).is_empty()),
        "job still there: {:?}",
        jobs(&env)
    );
}

/// A directory in the test's dir with everything in /usr/bin but squeue, scancel and python3.
fn usr_bin_but_squeue_scancel_and_python(env: &Env) -> PathBuf {
    let bin = env.path("login-bin");
    std::fs::create_dir(&bin).unwrap();
    for entry in std::fs::read_dir("/usr/bin").unwrap() {
        let name = entry.unwrap().file_name();
        let keep = !["squeue", "scancel"].contains(&name.to_str().unwrap())
            && !name.to_string_lossy().starts_with("python3");
        if keep {
            std::os::unix::fs::symlink(Path::new("/usr/bin").join(&name), bin.join(&name)).unwrap();
        }
    }
    bin
}

/// `list` on a login node whose sessions' PATH lacks some of Slurm's commands: a directory with
/// everything in /usr/bin but squeue, scancel and python3 (no daemons needed). A kernel whose
/// python the login node lacks has no python for its relay there either.
#[test]
fn list_names_the_slurm_commands_missing_on_the_login_node() {
    if !sshpyk_testhost::slurm_installed() {
        eprintln!("skipped: needs slurm-wlm's commands (scripts/setup)");
        return;
    }
    let env = Env::remote_host()
        .session_env("PATH", usr_bin_but_squeue_scancel_and_python)
        .build();
    add_slurm_kernel(&env, "--partition debug", &[]);
    env.add_kernel("plain", &[]);
    env.add_kernel("nopy", &["--slurm", "--partition debug"]);
    env.change_settings("nopy", |s| {
        s["remote_python"] = "/nonexistent/env/bin/python".into();
    });
    let list = env.sshpyk().arg("list").assert().code(9);
    let out = list.get_output();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("slurm commands:"))
        .collect();
    let missing_commands = "    (x) slurm commands: squeue, scancel not found on the login node 'remote' (the PATH of a plain ssh session, where sshpyk runs them); set --ssh-host-alias to the cluster's login node with `sshpyk edit`, or put Slurm's commands on that PATH";
    assert_eq!(rows, [missing_commands, missing_commands], "{text}");
    let relay_rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("slurm relay:"))
        .collect();
    assert_eq!(
        relay_rows,
        [
            format!(
                "    (v) slurm relay: {} runs the relay on the login node",
                env.remote_venv.join("bin/python").display()
            ),
            "    (x) slurm relay: neither /nonexistent/env/bin/python nor python3 is on the login node 'remote' (the relay that holds the kernel's job step runs there, on the PATH of a plain ssh session); install python3 there, or use a python the login node shares with the compute nodes (`sshpyk edit --remote-python-prefix`)".into()
        ],
        "{text}"
    );
    // The plain kernel on the same host has no such rows, and only the Slurm kernels failed.
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("2 kernel(s) with errors (rows marked (x)): k, nopy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A start there fails at once in one line, and queues nothing (no squeue to ask here: no
    // Slurm runs for this host).
    let (conn, _info) = env.connection_file("nocommands");
    let (code, log) = launch_failing(&env, &conn);
    assert_eq!(code, Some(5), "{log}");
    assert_eq!(
        log.lines().last().unwrap(),
        "sshpyk: error: squeue, scancel not found on the login node 'remote'; see `sshpyk list` for the fix",
        "{log}"
    );
}

#[test]
fn a_partition_that_does_not_exist_is_one_clear_line_and_nothing_is_queued() {
    let Some(env) = slurm_env() else { return };
    add_slurm_kernel(
        &env,
        "--partition nosuchpartition",
        &["--launch-timeout", "20"],
    );
    let (conn, _info) = env.connection_file("nopart");
    let (code, log) = launch_failing(&env, &conn);
    assert_eq!(code, Some(5), "{log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("sshpyk: error: slurm on 'remote' refused the job: invalid partition specified: nosuchpartition"),
        "{log}"
    );
    assert!(jobs(&env).is_empty());

    // A start that fails once its job runs (no such remote kernel) cancels the job at once.
    env.change_settings("k", |s| {
        s["slurm"]["options"] = format!("--partition {SLURM_PARTITION}").into();
        s["remote_kernel_name"] = "nosuchkernel".into();
    });
    let (code, log) = launch_failing(&env, &conn);
    assert_eq!(code, Some(5), "{log}");
    assert!(
        log.contains("remote kernel 'nosuchkernel' not found"),
        "{log}"
    );
    assert!(log.contains("cancelled slurm job"), "{log}");
    // Well before the grace (4 s) would have ended it.
    assert!(
        eventually(Duration::from_secs(2), || jobs(&env).is_empty()),
        "{:?}",
        jobs(&env)
    );
}

#[test]
fn a_job_still_queued_when_the_launch_timeout_runs_out_is_cancelled() {
    let Some(env) = slurm_env() else { return };
    // More CPUs than the node has: queued for good.
    add_slurm_kernel(&env, "--cpus-per-task 8", &["--launch-timeout", "4"]);
    let (conn, _info) = env.connection_file("queued");
    let (code, log) = launch_failing(&env, &conn);
    assert_eq!(code, Some(6), "{log}");
    assert!(log.contains("queued ("), "{log}");
    assert!(
        eventually(Duration::from_secs(5), || jobs(&env).is_empty()),
        "still queued: {:?}",
        jobs(&env)
    );
}
