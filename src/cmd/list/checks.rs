//! `list`'s rows: the launcher in kernel.json, each host (client, config, connection, remote
//! system), each kernel on it (remote python, kernelspec, environment) and its mounts.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{check, local_on_remote_rows, Check, HostKey, Status};
use crate::jupyter::kernelspec::Kernelspec;
use crate::mounts::local_on_remote::{self, RemoteMountFacts};
use crate::probe::{self, ProbeTarget, PythonFacts, PythonProbe, RemoteFacts};
use crate::settings::Settings;
use crate::slurm::{self, LoginNode};
use crate::ssh::{config, Master};

/// Budget for opening a connection, and for the probe once connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Does kernel.json still start this spec through an existing sshpyk binary?
pub(super) fn launcher(spec: &Kernelspec) -> Vec<Check> {
    let argv = &spec.spec.argv;
    let mut rows = Vec::new();
    match argv.first() {
        Some(exe) if crate::python_sshpyk::coexistence::replaced_by_python_sshpyk(Path::new(exe)) => rows.push(check(Status::Error, "launcher", format!("{exe} is now the Python sshpyk's command (pip installed it over this sshpyk); reinstall sshpyk-rs there (pip install --force-reinstall sshpyk-rs), or run `sshpyk edit --kernel-name {}` with another installed sshpyk", spec.name))),
        Some(exe) if Path::new(exe).is_file() => {}
        Some(exe) => rows.push(check(Status::Error, "launcher", format!("{exe} does not exist; run `sshpyk edit --kernel-name {}` with the installed sshpyk", spec.name))),
        None => rows.push(check(Status::Error, "launcher", "kernel.json has an empty argv")),
    }
    let dir_arg = argv
        .iter()
        .position(|a| a == "--kernelspec")
        .and_then(|i| argv.get(i + 1));
    if dir_arg.map(Path::new) != Some(spec.dir.as_path()) {
        rows.push(check(Status::Warning, "launcher", format!("kernel.json points at another kernelspec dir; run `sshpyk edit --kernel-name {}` to fix it", spec.name)));
    }
    rows
}

/// What one host is asked about, for all its kernels.
pub(super) struct HostQuery {
    pythons: Vec<ProbeTarget>,
    /// The configured sshfs of kernels with mounts ("" = on PATH); none: no mount checks.
    sshfs: Vec<String>,
    /// The remote pythons of the Slurm kernels: the login node needs Slurm's commands and a
    /// python for each one's relay.
    slurm_pythons: Vec<String>,
}

impl HostQuery {
    pub(crate) fn of<'a>(kernels: impl Iterator<Item = &'a Settings>) -> Self {
        let mut query = HostQuery {
            pythons: Vec::new(),
            sshfs: Vec::new(),
            slurm_pythons: Vec::new(),
        };
        for settings in kernels {
            query.pythons.push(ProbeTarget::of(settings));
            if settings.slurm.is_some() {
                query.slurm_pythons.push(settings.remote_python.clone());
            }
            if !settings.mounts.is_empty() {
                query
                    .sshfs
                    .push(settings.remote_sshfs.clone().unwrap_or_default());
            }
        }
        query.pythons.sort();
        query.pythons.dedup();
        query.sshfs.sort();
        query.sshfs.dedup();
        query.slurm_pythons.sort();
        query.slurm_pythons.dedup();
        query
    }
}

/// What one host answered: its own rows, then facts for its kernels' rows (none when it could
/// not be reached).
pub(super) struct HostFacts {
    rows: Vec<Check>,
    remote: Option<RemoteFacts>,
    mounts: Option<RemoteMountFacts>,
    /// Slurm's commands and the relays' pythons on the login node, or why they could not be
    /// checked.
    slurm: Option<std::result::Result<LoginNode, String>>,
}

impl HostFacts {
    fn unreached(rows: Vec<Check>) -> Self {
        HostFacts {
            rows,
            remote: None,
            mounts: None,
            slurm: None,
        }
    }
}

/// Local, effective-config and connection checks for one host, then the remote probe.
pub(super) async fn host(host: &HostKey, query: &HostQuery) -> HostFacts {
    let mut rows = Vec::new();
    let Some(master) = local_host_checks(host, &mut rows).await else {
        return HostFacts::unreached(rows);
    };
    rows.extend(effective_checks(&master));
    probe_host(host, &master, query, rows).await
}

/// The ssh client, config and alias; the master for the alias when they are usable.
async fn local_host_checks(host: &HostKey, rows: &mut Vec<Check>) -> Option<Master> {
    match ssh_version(&host.ssh).await {
        Ok(version) => rows.push(check(
            Status::Ok,
            "ssh client",
            format!("{} ({version})", host.ssh),
        )),
        Err(e) => {
            rows.push(check(Status::Error, "ssh client", e));
            return None;
        }
    }
    if !host.config.is_file() {
        rows.push(check(
            Status::Error,
            "ssh config",
            format!(
                "{} does not exist; create it or pass --ssh-config to `sshpyk edit`",
                host.config.display()
            ),
        ));
        return None;
    }
    rows.push(check(
        Status::Ok,
        "ssh config",
        host.config.display().to_string(),
    ));
    if let Err(e) = config::require_alias(&host.config, &host.alias) {
        rows.push(check(Status::Error, "ssh alias", e.to_string()));
        return None;
    }
    rows.push(check(
        Status::Ok,
        "ssh alias",
        format!("'{}' is declared", host.alias),
    ));
    match Master::for_alias(&host.ssh, &host.config, &host.alias, false).await {
        Ok(m) => Some(m),
        Err(e) => {
            rows.push(check(Status::Error, "ssh settings", e.to_string()));
            None
        }
    }
}

/// Connects, then probes the pythons and (for hosts with mounts) FUSE and sshfs at once.
async fn probe_host(
    host: &HostKey,
    master: &Master,
    query: &HostQuery,
    mut rows: Vec<Check>,
) -> HostFacts {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    if let Err(e) = master.ensure(deadline).await {
        rows.push(check(Status::Error, "connection", e.to_string()));
        return HostFacts::unreached(rows);
    }
    let (probed, mounts, slurm) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, probe::probe(master, &query.pythons)),
        probe_mounts(master, &query.sshfs),
        probe_slurm(master, &query.slurm_pythons)
    );
    match probed {
        Ok(Ok(facts)) => {
            rows.push(check(
                Status::Ok,
                "connection",
                format!("works ({:.2} s)", started.elapsed().as_secs_f64()),
            ));
            rows.push(check(Status::Info, "remote system", facts.uname.clone()));
            HostFacts {
                rows,
                remote: Some(facts),
                mounts,
                slurm,
            }
        }
        Ok(Err(e)) => {
            rows.push(check(Status::Error, "connection", e.to_string()));
            HostFacts::unreached(rows)
        }
        Err(_) => {
            rows.push(check(
                Status::Error,
                "connection",
                format!(
                    "'{}' did not answer within {} s",
                    host.alias,
                    PROBE_TIMEOUT.as_secs()
                ),
            ));
            HostFacts::unreached(rows)
        }
    }
}

/// The mounts' remote checks (FUSE, sshfs), only for hosts with mounts.
async fn probe_mounts(master: &Master, sshfs: &[String]) -> Option<RemoteMountFacts> {
    if sshfs.is_empty() {
        return None;
    }
    Some(
        match tokio::time::timeout(PROBE_TIMEOUT, local_on_remote::probe_remote(master, sshfs))
            .await
        {
            Ok(Ok(facts)) => facts,
            Ok(Err(e)) => RemoteMountFacts::unknown(e.to_string()),
            Err(_) => RemoteMountFacts::unknown("the remote did not answer in time".into()),
        },
    )
}

/// Slurm's commands and the relays' pythons on the login node, only for hosts with Slurm
/// kernels.
async fn probe_slurm(
    master: &Master,
    pythons: &[String],
) -> Option<std::result::Result<LoginNode, String>> {
    if pythons.is_empty() {
        return None;
    }
    Some(
        match tokio::time::timeout(PROBE_TIMEOUT, slurm::login_node(master, pythons)).await {
            Ok(found) => found.map_err(|e| e.to_string()),
            Err(_) => Err("the login node did not answer in time".into()),
        },
    )
}

async fn ssh_version(ssh: &str) -> std::result::Result<String, String> {
    let out = tokio::process::Command::new(ssh)
        .arg("-V")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| config::spawn_error(ssh, e).to_string())?;
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("'{ssh} -V' failed: {text}"))
    }
}

/// What `ssh -G` says about identity, multiplexing and prompting.
fn effective_checks(master: &Master) -> Vec<Check> {
    let c = master.effective();
    let mut rows = vec![check(
        Status::Info,
        "target",
        format!(
            "{}@{}:{}",
            c.get("user").unwrap_or("?"),
            c.get("hostname").unwrap_or("?"),
            c.get("port").unwrap_or("22")
        ),
    )];
    rows.push(identity_check(master));
    rows.extend(control_checks(master));
    match c.get("batchmode") {
        Some("yes") => rows.push(check(Status::Ok, "batch mode", "BatchMode yes")),
        _ => rows.push(check(Status::Info, "batch mode", "BatchMode is off in the config; sshpyk always runs ssh with BatchMode=yes (it never prompts)")),
    }
    rows
}

fn identity_check(master: &Master) -> Check {
    let c = master.effective();
    let identities: Vec<&String> = c
        .all("identityfile")
        .iter()
        .filter(|p| Path::new(expand_home(p).as_str()).is_file())
        .collect();
    if let Some(first) = identities.first() {
        check(Status::Ok, "identity file", format!("{first} exists"))
    } else if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        check(
            Status::Info,
            "identity file",
            "none of the IdentityFile entries exists; relying on the ssh agent",
        )
    } else {
        check(
            Status::Warning,
            "identity file",
            format!(
                "none exists ({}); key authentication will fail",
                c.all("identityfile").join(", ")
            ),
        )
    }
}

fn control_checks(master: &Master) -> Vec<Check> {
    let c = master.effective();
    let mut rows = Vec::new();
    match (c.control_path(), c.get("controlmaster").unwrap_or("false")) {
        (None, _) => rows.push(check(
            Status::Info,
            "control master",
            "no ControlPath configured; sshpyk keeps its own in its private runtime dir",
        )),
        (Some(_), "ask" | "autoask") => rows.push(check(
            Status::Warning,
            "control master",
            "ControlMaster ask/autoask prompts; sshpyk never prompts, so use 'auto'",
        )),
        (Some(path), mode) => rows.push(check(
            Status::Ok,
            "control master",
            format!("ControlMaster {mode}, ControlPath {path}"),
        )),
    }
    if c.control_path().is_some() {
        match c.get("controlpersist") {
            Some("no") | None => rows.push(check(
                Status::Info,
                "control persist",
                "not set; masters sshpyk opens persist 10m",
            )),
            Some(p) => rows.push(check(Status::Ok, "control persist", p.to_string())),
        }
    }
    rows
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest).to_string_lossy().into_owned(),
        _ => path.to_string(),
    }
}

/// All rows of one kernel: its host's, its remote python's, its `own` (no host needed), its
/// timeouts and its mounts'.
pub(super) fn kernel(settings: &Settings, host: &HostFacts, mut own: Vec<Check>) -> Vec<Check> {
    let mut rows = host.rows.clone();
    if let Some(facts) = &host.remote {
        rows.extend(environment_checks(settings, host, facts));
        rows.extend(python_checks(settings, facts));
    }
    rows.append(&mut own);
    rows.push(check(
        Status::Info,
        "timeouts",
        format!(
            "launch {} s, shutdown {} s, orphan {} s",
            settings.launch_timeout, settings.shutdown_timeout, settings.orphan_timeout
        ),
    ));
    rows.extend(local_on_remote_rows::checks(settings, host.mounts.as_ref()));
    rows
}

/// What runs around the kernel: its variables, its Slurm allocation, its init snippet.
fn environment_checks(settings: &Settings, host: &HostFacts, facts: &RemoteFacts) -> Vec<Check> {
    let mut rows = Vec::new();
    if !settings.remote_env.is_empty() {
        let keys: Vec<&str> = settings.remote_env.keys().map(String::as_str).collect();
        rows.push(check(
            Status::Info,
            "remote env",
            format!("{} (set after the init snippet)", keys.join(", ")),
        ));
    }
    if let Some(slurm) = &settings.slurm {
        rows.push(check(
            Status::Info,
            "slurm",
            format!(
                "runs in a job on a compute node: sbatch {}; the allocation stays {} s after the kernel for a restart",
                slurm.options, slurm.grace
            ),
        ));
        if let Some(found) = &host.slurm {
            rows.extend(slurm_login_node_checks(settings, found));
        }
    }
    if settings.remote_init.is_some() {
        rows.push(match facts.python(settings) {
            Some(PythonProbe::InitFailed(failure)) => check(
                Status::Error,
                "remote init",
                format!(
                    "{}; fix it with `sshpyk edit --remote-init`",
                    failure.describe()
                ),
            ),
            _ => check(
                Status::Ok,
                "remote init",
                "the init snippet succeeds in a login shell",
            ),
        });
    }
    rows
}

/// Slurm's commands and the relay's python on the login node, which every start of a Slurm
/// kernel runs there.
fn slurm_login_node_checks(
    settings: &Settings,
    found: &std::result::Result<LoginNode, String>,
) -> Vec<Check> {
    match found {
        Ok(found) => vec![
            slurm_commands_check(settings, found),
            slurm_relay_check(settings, found),
        ],
        Err(why) => vec![check(
            Status::Warning,
            "slurm commands",
            format!("could not check: {why}"),
        )],
    }
}

fn slurm_commands_check(settings: &Settings, found: &LoginNode) -> Check {
    let missing: Vec<&str> = found
        .commands
        .iter()
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        let paths: Vec<&str> = found
            .commands
            .iter()
            .filter_map(|(_, p)| p.as_deref())
            .collect();
        return check(Status::Ok, "slurm commands", paths.join(", "));
    }
    check(
        Status::Error,
        "slurm commands",
        format!(
            "{} not found on the login node '{}' (the PATH of a plain ssh session, where sshpyk runs them); set --ssh-host-alias to the cluster's login node with `sshpyk edit`, or put Slurm's commands on that PATH",
            missing.join(", "),
            settings.ssh_host_alias
        ),
    )
}

/// The python that runs the kernel's relay on the login node: its own, else python3.
fn slurm_relay_check(settings: &Settings, found: &LoginNode) -> Check {
    let py = &settings.remote_python;
    match found.relay_pythons.iter().find(|(asked, _)| asked == py) {
        Some((_, Some(path))) => check(
            Status::Ok,
            "slurm relay",
            format!("{path} runs the relay on the login node"),
        ),
        _ => check(
            Status::Error,
            "slurm relay",
            format!(
                "neither {py} nor python3 is on the login node '{}' (the relay that holds the kernel's job step runs there, on the PATH of a plain ssh session); install python3 there, or use a python the login node shares with the compute nodes (`sshpyk edit --remote-python-prefix`)",
                settings.ssh_host_alias
            ),
        ),
    }
}

/// Rows about this kernel's remote python and remote kernelspec.
fn python_checks(settings: &Settings, facts: &RemoteFacts) -> Vec<Check> {
    let py = &settings.remote_python;
    let missing = match facts.python(settings) {
        Some(PythonProbe::Found(p)) => return found_python_checks(settings, p),
        Some(PythonProbe::InitFailed(_)) => return Vec::new(),
        Some(PythonProbe::Broken(out)) => format!("{py} does not run: {out}"),
        Some(PythonProbe::Directory) => format!(
            "{py} is a directory; for an environment use `sshpyk edit --remote-python-prefix {py}`"
        ),
        Some(PythonProbe::Missing) | None => {
            format!("{py} does not exist; fix it with `sshpyk edit --remote-python-prefix`")
        }
    };
    vec![check(Status::Error, "remote python", missing)]
}

fn found_python_checks(settings: &Settings, p: &PythonFacts) -> Vec<Check> {
    let py = &settings.remote_python;
    let mut rows = Vec::new();
    if let Some(cwd) = &p.cwd {
        rows.push(if p.cwd_exists {
            check(Status::Ok, "remote cwd", format!("{cwd} exists"))
        } else {
            check(
                Status::Error,
                "remote cwd",
                format!(
                    "{cwd} does not exist; create it or fix it with `sshpyk edit --remote-cwd`"
                ),
            )
        });
    }
    let Some(jc) = &p.jupyter_client else {
        rows.push(check(
            Status::Error,
            "remote python",
            format!(
                "{py} cannot import jupyter_client ({}); install it there",
                p.jupyter_client_error.as_deref().unwrap_or("?")
            ),
        ));
        return rows;
    };
    rows.push(check(
        Status::Ok,
        "remote python",
        format!("{py} (Python {}, jupyter_client {jc})", p.version),
    ));
    rows.extend(remote_kernel_checks(settings, p));
    rows.push(if p.runtime_dir_writable {
        check(
            Status::Ok,
            "remote runtime dir",
            format!("{} is writable", p.runtime_dir),
        )
    } else {
        check(
            Status::Error,
            "remote runtime dir",
            format!(
                "{} is not writable; fix its permissions or set JUPYTER_RUNTIME_DIR there",
                p.runtime_dir
            ),
        )
    });
    rows
}

/// The remote kernelspec, and how its kernel's sockets are reached.
fn remote_kernel_checks(settings: &Settings, p: &PythonFacts) -> Vec<Check> {
    let name = &settings.remote_kernel_name;
    let Some(k) = p.kernel(name) else {
        return vec![check(
            Status::Error,
            "remote kernel",
            format!("'{name}' not found (available: {})", p.kernel_names()),
        )];
    };
    let found = check(
        Status::Ok,
        "remote kernel",
        format!(
            "'{name}': {} (interrupt mode: {})",
            k.argv.join(" "),
            k.interrupt_mode.as_deref().unwrap_or("signal")
        ),
    );
    let ipc = k.argv.iter().any(|a| {
        a.rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with("ipykernel"))
    });
    let transport = if ipc {
        "ipc: Unix sockets in a 0700 run dir, reachable by you only"
    } else {
        "tcp on the remote loopback (this kernel is not ipykernel); other users of the remote host can connect to its ports"
    };
    vec![
        found,
        check(
            if ipc { Status::Ok } else { Status::Info },
            "kernel transport",
            transport,
        ),
    ]
}
