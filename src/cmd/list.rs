//! `sshpyk list`: every kernelspec Jupyter sees; sshpyk ones with checked rows.
//!
//! Checks of different kernels run concurrently, one connection and one probe per host, each
//! bounded by a short timeout so that a dead host never hangs the listing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::ListArgs;
use crate::error::{Error, Result};
use crate::kernelspec::{self, Kernelspec, Settings};
use crate::local_mount::{self, ActiveMount};
use crate::mount::{self, RemoteMountFacts};
use crate::python_sshpyk;
use crate::remote::probe::{self, ProbeTarget, PythonProbe, RemoteFacts};
use crate::ssh::{config, Master};

/// Budget for opening a connection, and for the probe once connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
    Warning,
    Info,
}

impl Status {
    fn mark(self, color: bool) -> String {
        let (mark, code) = match self {
            Status::Ok => ("(v)", "32"),
            Status::Error => ("(x)", "31"),
            Status::Warning => ("(!)", "33"),
            Status::Info => ("(i)", "34"),
        };
        if color {
            format!("\x1b[{code}m{mark}\x1b[0m")
        } else {
            mark.to_string()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub status: Status,
    pub check: &'static str,
    pub message: String,
}

fn check(status: Status, check: &'static str, message: impl Into<String>) -> Check {
    Check {
        status,
        check,
        message: message.into(),
    }
}

#[derive(Debug, Serialize)]
struct KernelReport {
    name: String,
    display_name: String,
    language: String,
    dir: PathBuf,
    sshpyk: bool,
    /// Written by the Python sshpyk (`sshpyk edit --adopt` converts it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    python_sshpyk: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    settings: Option<Settings>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checks: Vec<Check>,
}

pub async fn run(args: ListArgs) -> Result<()> {
    let (show_remote, show_local) = match (args.remote, args.local) {
        (false, false) => (true, true),
        flags => flags,
    };
    let mut reports = Vec::new();
    let mut hosts: BTreeMap<HostKey, Vec<usize>> = BTreeMap::new();
    for spec in kernelspec::find_all()? {
        let settings = spec.spec.settings();
        let is_sshpyk = settings.is_some();
        let python_sshpyk = python_sshpyk::settings_of(&spec.spec).filter(|_| !is_sshpyk);
        let remote = is_sshpyk || python_sshpyk.is_some();
        if (remote && !show_remote) || (!remote && !show_local) {
            continue;
        }
        let mut report = KernelReport {
            name: spec.name.clone(),
            display_name: spec.spec.display_name.clone(),
            language: spec.spec.language.clone(),
            dir: spec.dir.clone(),
            sshpyk: is_sshpyk,
            python_sshpyk: python_sshpyk.is_some(),
            settings: None,
            checks: Vec::new(),
        };
        if let Some(theirs) = &python_sshpyk {
            report.checks.push(check(
                Status::Info,
                "python sshpyk",
                format!(
                    "written by the Python sshpyk ({}); convert it with `sshpyk edit --kernel-name {} --adopt`",
                    theirs.summary(),
                    spec.name
                ),
            ));
        }
        match settings {
            Some(Ok(s)) => {
                report.checks.extend(launcher_checks(&spec));
                hosts
                    .entry(HostKey::of(&s))
                    .or_default()
                    .push(reports.len());
                report.settings = Some(s);
            }
            Some(Err(e)) => report
                .checks
                .push(check(Status::Error, "settings", e.to_string())),
            None => {}
        }
        reports.push(report);
    }

    if !args.no_check {
        let mut tasks = tokio::task::JoinSet::new();
        for (host, members) in hosts {
            let mut pythons: Vec<ProbeTarget> = members
                .iter()
                .filter_map(|&i| reports[i].settings.as_ref())
                .map(ProbeTarget::of)
                .collect();
            pythons.sort();
            pythons.dedup();
            let mut sshfs: Vec<String> = members
                .iter()
                .filter_map(|&i| reports[i].settings.as_ref())
                .filter(|s| !s.mounts.is_empty())
                .map(|s| s.remote_sshfs.clone().unwrap_or_default())
                .collect();
            sshfs.sort();
            sshfs.dedup();
            tasks.spawn(async move {
                let (rows, facts, mount_facts) = check_host(&host, &pythons, &sshfs).await;
                (members, rows, facts, mount_facts)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (members, rows, facts, mount_facts) = joined.expect("host check task");
            for i in members {
                let report = &mut reports[i];
                let settings = report
                    .settings
                    .clone()
                    .expect("sshpyk kernels have settings");
                let mut all = rows.clone();
                if let Some(facts) = &facts {
                    all.extend(kernel_checks(&settings, facts));
                }
                all.append(&mut report.checks);
                all.push(check(
                    Status::Info,
                    "timeouts",
                    format!(
                        "launch {} s, shutdown {} s, orphan {} s",
                        settings.launch_timeout, settings.shutdown_timeout, settings.orphan_timeout
                    ),
                ));
                all.extend(mount_checks(&settings, mount_facts.as_ref()));
                report.checks = all;
            }
        }
    }

    let mounts = local_mount::active();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "kernels": reports, "mounts": mounts })
            )
            .expect("report serializes")
        );
    } else {
        print_human(&reports, show_remote, show_local);
        print_mounts(&mounts);
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.checks.iter().any(|c| c.status == Status::Error))
        .map(|r| r.name.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::ChecksFailed(format!(
            "{} kernel(s) with errors (rows marked (x)): {}",
            failed.len(),
            failed.join(", ")
        )))
    }
}

/// Kernels that share a host alias (and client and config) share one connection and probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HostKey {
    ssh: String,
    config: PathBuf,
    alias: String,
}

impl HostKey {
    fn of(s: &Settings) -> Self {
        HostKey {
            ssh: s.ssh.clone(),
            config: s.ssh_config.clone(),
            alias: s.ssh_host_alias.clone(),
        }
    }
}

/// Does kernel.json still start this spec through an existing sshpyk binary?
fn launcher_checks(spec: &Kernelspec) -> Vec<Check> {
    let argv = &spec.spec.argv;
    let mut rows = Vec::new();
    match argv.first() {
        Some(exe) if crate::coexistence::replaced_by_python_sshpyk(Path::new(exe)) => rows.push(check(Status::Error, "launcher", format!("{exe} is now the Python sshpyk's command (pip installed it over this sshpyk); reinstall sshpyk-rs there (pip install --force-reinstall sshpyk-rs), or run `sshpyk edit --kernel-name {}` with another installed sshpyk", spec.name))),
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

/// Local, effective-config and connection checks for one host, then the remote probe.
async fn check_host(
    host: &HostKey,
    pythons: &[ProbeTarget],
    sshfs: &[String],
) -> (Vec<Check>, Option<RemoteFacts>, Option<RemoteMountFacts>) {
    let mut rows = Vec::new();
    match ssh_version(&host.ssh).await {
        Ok(version) => rows.push(check(
            Status::Ok,
            "ssh client",
            format!("{} ({version})", host.ssh),
        )),
        Err(e) => {
            rows.push(check(Status::Error, "ssh client", e));
            return (rows, None, None);
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
        return (rows, None, None);
    }
    rows.push(check(
        Status::Ok,
        "ssh config",
        host.config.display().to_string(),
    ));
    if let Err(e) = config::require_alias(&host.config, &host.alias) {
        rows.push(check(Status::Error, "ssh alias", e.to_string()));
        return (rows, None, None);
    }
    rows.push(check(
        Status::Ok,
        "ssh alias",
        format!("'{}' is declared", host.alias),
    ));
    let master = match Master::for_alias(&host.ssh, &host.config, &host.alias, false).await {
        Ok(m) => m,
        Err(e) => {
            rows.push(check(Status::Error, "ssh settings", e.to_string()));
            return (rows, None, None);
        }
    };
    rows.extend(effective_checks(&master));

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    if let Err(e) = master.ensure(deadline).await {
        rows.push(check(Status::Error, "connection", e.to_string()));
        return (rows, None, None);
    }
    // The mounts' remote checks (FUSE, sshfs) run alongside, only for hosts with mounts.
    let mounts = async {
        if sshfs.is_empty() {
            return None;
        }
        Some(
            match tokio::time::timeout(PROBE_TIMEOUT, mount::probe_remote(&master, sshfs)).await {
                Ok(Ok(facts)) => facts,
                Ok(Err(e)) => RemoteMountFacts::unknown(e.to_string()),
                Err(_) => RemoteMountFacts::unknown("the remote did not answer in time".into()),
            },
        )
    };
    let (probed, mount_facts) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, probe::probe(&master, pythons)),
        mounts
    );
    match probed {
        Ok(Ok(facts)) => {
            rows.push(check(
                Status::Ok,
                "connection",
                format!("works ({:.2} s)", started.elapsed().as_secs_f64()),
            ));
            rows.push(check(Status::Info, "remote system", facts.uname.clone()));
            (rows, Some(facts), mount_facts)
        }
        Ok(Err(e)) => {
            rows.push(check(Status::Error, "connection", e.to_string()));
            (rows, None, None)
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
            (rows, None, None)
        }
    }
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
    let identities: Vec<&String> = c
        .all("identityfile")
        .iter()
        .filter(|p| Path::new(expand_home(p).as_str()).is_file())
        .collect();
    if let Some(first) = identities.first() {
        rows.push(check(
            Status::Ok,
            "identity file",
            format!("{first} exists"),
        ));
    } else if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        rows.push(check(
            Status::Info,
            "identity file",
            "none of the IdentityFile entries exists; relying on the ssh agent",
        ));
    } else {
        rows.push(check(
            Status::Warning,
            "identity file",
            format!(
                "none exists ({}); key authentication will fail",
                c.all("identityfile").join(", ")
            ),
        ));
    }
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
    match c.get("batchmode") {
        Some("yes") => rows.push(check(Status::Ok, "batch mode", "BatchMode yes")),
        _ => rows.push(check(Status::Info, "batch mode", "BatchMode is off in the config; sshpyk always runs ssh with BatchMode=yes (it never prompts)")),
    }
    rows
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest).to_string_lossy().into_owned(),
        _ => path.to_string(),
    }
}

/// Rows about this kernel's remote python and remote kernelspec.
fn kernel_checks(settings: &Settings, facts: &RemoteFacts) -> Vec<Check> {
    let py = &settings.remote_python;
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
    let p = match facts.python(settings) {
        Some(PythonProbe::Found(p)) => p,
        Some(PythonProbe::InitFailed(_)) => return rows,
        Some(PythonProbe::Broken(out)) => {
            rows.push(check(
                Status::Error,
                "remote python",
                format!("{py} does not run: {out}"),
            ));
            return rows;
        }
        Some(PythonProbe::Directory) => {
            rows.push(check(
                Status::Error,
                "remote python",
                format!("{py} is a directory; for an environment use `sshpyk edit --remote-python-prefix {py}`"),
            ));
            return rows;
        }
        Some(PythonProbe::Missing) | None => {
            rows.push(check(
                Status::Error,
                "remote python",
                format!("{py} does not exist; fix it with `sshpyk edit --remote-python-prefix`"),
            ));
            return rows;
        }
    };
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
    match p.kernel(&settings.remote_kernel_name) {
        Some(k) => rows.push(check(
            Status::Ok,
            "remote kernel",
            format!(
                "'{}': {} (interrupt mode: {})",
                settings.remote_kernel_name,
                k.argv.join(" "),
                k.interrupt_mode.as_deref().unwrap_or("signal")
            ),
        )),
        None => rows.push(check(
            Status::Error,
            "remote kernel",
            format!(
                "'{}' not found (available: {})",
                settings.remote_kernel_name,
                p.kernel_names()
            ),
        )),
    }
    if let Some(k) = p.kernel(&settings.remote_kernel_name) {
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
        rows.push(check(
            if ipc { Status::Ok } else { Status::Info },
            "kernel transport",
            transport,
        ));
    }
    if p.runtime_dir_writable {
        rows.push(check(
            Status::Ok,
            "remote runtime dir",
            format!("{} is writable", p.runtime_dir),
        ));
    } else {
        rows.push(check(
            Status::Error,
            "remote runtime dir",
            format!(
                "{} is not writable; fix its permissions or set JUPYTER_RUNTIME_DIR there",
                p.runtime_dir
            ),
        ));
    }
    rows
}

fn print_human(reports: &[KernelReport], show_remote: bool, show_local: bool) {
    let color = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut out = String::new();
    type Member = fn(&KernelReport) -> bool;
    let groups: [(&str, Member, bool); 3] = [
        ("sshpyk kernels", |r| r.sshpyk, show_remote),
        (
            "local kernels",
            |r| !r.sshpyk && !r.python_sshpyk,
            show_local,
        ),
        ("Python sshpyk kernels", |r| r.python_sshpyk, show_remote),
    ];
    for (title, member, shown) in groups {
        let group: Vec<&KernelReport> = reports.iter().filter(|r| member(r)).collect();
        // The Python sshpyk's group only when there is one: most users never had it.
        if !shown || (group.is_empty() && title.starts_with("Python")) {
            continue;
        }
        out.push_str(title);
        out.push('\n');
        if group.is_empty() {
            out.push_str("  (none)\n");
        }
        for r in group {
            out.push_str(&format!(
                "  {}  \"{}\"  {}  {}\n",
                r.name,
                r.display_name,
                r.language,
                r.dir.display()
            ));
            if let Some(s) = &r.settings {
                out.push_str(&format!(
                    "    ssh {} → {} kernel '{}'\n",
                    s.ssh_host_alias, s.remote_python, s.remote_kernel_name
                ));
            }
            for c in &r.checks {
                out.push_str(&format!(
                    "    {} {}: {}\n",
                    c.status.mark(color),
                    c.check,
                    c.message
                ));
            }
        }
    }
    print!("{out}");
}

/// Active `sshpyk mount`s, when there are any.
fn print_mounts(mounts: &[ActiveMount]) {
    if mounts.is_empty() {
        return;
    }
    println!("sshpyk mounts (remote directories mounted here)");
    for m in mounts {
        println!("  {}", m.describe());
    }
}

/// Rows for each mount: the local directory and its confinement here, sshfs and FUSE there
/// (`facts` is `None` when the host could not be checked).
fn mount_checks(settings: &Settings, facts: Option<&RemoteMountFacts>) -> Vec<Check> {
    let mut rows = Vec::new();
    if settings.mounts.is_empty() {
        return rows;
    }
    for m in &settings.mounts {
        let options = if m.options.is_empty() {
            String::new()
        } else {
            format!(" ({})", m.options.join(","))
        };
        rows.push(check(
            Status::Info,
            "mount",
            format!("{} on remote {}{options}", m.local, m.remote),
        ));
        let local = mount::local_facts(&settings.mount_settings(), m);
        rows.push(match local.local_dir {
            Ok(()) => check(Status::Ok, "mount local dir", format!("{} exists", m.local)),
            Err(why) => check(Status::Error, "mount local dir", why),
        });
        rows.push(match local.confinement {
            Ok(how) => check(Status::Ok, "mount confinement", how),
            Err(why) => check(Status::Warning, "mount confinement", why),
        });
    }
    let Some(facts) = facts else {
        return rows;
    };
    let want = settings.remote_sshfs.clone().unwrap_or_default();
    let shown = if want.is_empty() {
        "sshfs"
    } else {
        want.as_str()
    };
    rows.push(match facts.sshfs.get(&want) {
        Some(Some(path)) => check(Status::Ok, "remote sshfs", path.clone()),
        Some(None) if want.is_empty() => check(
            Status::Error,
            "remote sshfs",
            "sshfs not found on the remote PATH; install it there or set --remote-sshfs with `sshpyk edit`",
        ),
        Some(None) => check(
            Status::Error,
            "remote sshfs",
            format!("{shown} not found or not executable on the remote; fix --remote-sshfs with `sshpyk edit`"),
        ),
        None => check(
            Status::Error,
            "remote sshfs",
            format!("could not check {shown}: {}", facts.fuse.clone().err().unwrap_or_default()),
        ),
    });
    rows.push(match &facts.fuse {
        Ok(()) => check(Status::Ok, "remote FUSE", "/dev/fuse is usable"),
        Err(why) => check(Status::Error, "remote FUSE", why.clone()),
    });
    rows
}
