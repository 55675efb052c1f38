//! `sshpyk list`: every kernelspec Jupyter sees; sshpyk ones with checked rows.
//!
//! [`run`] gathers the kernelspecs, checks them, and prints them. Checks of different kernels run
//! concurrently, one connection and one probe per host, each bounded by a short timeout so that a
//! dead host never hangs the listing. The rows come from [`checks`] (mounts' from [`mounts`]), the
//! human output from [`print`].

mod checks;
mod local_on_remote_rows;
mod print;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::ListArgs;
use crate::error::{Error, Result};
use crate::jupyter::kernelspec::{self, Kernelspec};
use crate::mounts::remote_on_local;
use crate::python_sshpyk;
use crate::settings::Settings;
use checks::HostQuery;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) status: Status,
    pub(crate) check: &'static str,
    pub(crate) message: String,
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

/// The reports' indices by the host their kernels run on.
type Hosts = BTreeMap<HostKey, Vec<usize>>;

pub(crate) async fn run(args: ListArgs) -> Result<()> {
    let (show_remote, show_local) = match (args.remote, args.local) {
        (false, false) => (true, true),
        flags => flags,
    };
    let (mut reports, hosts) = gather(show_remote, show_local)?;
    if !args.no_check {
        check_hosts(&mut reports, hosts).await;
    }
    let mounts = remote_on_local::active();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "kernels": reports, "mounts": mounts })
            )
            .expect("report serializes")
        );
    } else {
        print::kernels(&reports, show_remote, show_local);
        print::mounts(&mounts);
    }
    outcome(&reports)
}

/// The kernelspecs shown, with their local rows, and which host each sshpyk one runs on.
fn gather(show_remote: bool, show_local: bool) -> Result<(Vec<KernelReport>, Hosts)> {
    let mut reports = Vec::new();
    let mut hosts = Hosts::new();
    for spec in kernelspec::find_all()? {
        let Some(report) = report_of(&spec, show_remote, show_local) else {
            continue;
        };
        if let Some(settings) = &report.settings {
            hosts
                .entry(HostKey::of(settings))
                .or_default()
                .push(reports.len());
        }
        reports.push(report);
    }
    Ok((reports, hosts))
}

/// One kernelspec and the rows that need no host; `None` when its group is not shown.
fn report_of(spec: &Kernelspec, show_remote: bool, show_local: bool) -> Option<KernelReport> {
    let settings = spec.spec.settings();
    let is_sshpyk = settings.is_some();
    let python_sshpyk = python_sshpyk::settings_of(&spec.spec).filter(|_| !is_sshpyk);
    let remote = is_sshpyk || python_sshpyk.is_some();
    if (remote && !show_remote) || (!remote && !show_local) {
        return None;
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
            report.checks.extend(checks::launcher(spec));
            report.settings = Some(s);
        }
        Some(Err(e)) => report
            .checks
            .push(check(Status::Error, "settings", e.to_string())),
        None => {}
    }
    Some(report)
}

/// Checks every host once, concurrently, and gives each kernel its host's rows and its own.
async fn check_hosts(reports: &mut [KernelReport], hosts: Hosts) {
    let mut tasks = tokio::task::JoinSet::new();
    for (host, members) in hosts {
        let query = HostQuery::of(members.iter().filter_map(|&i| reports[i].settings.as_ref()));
        tasks.spawn(async move {
            let facts = checks::host(&host, &query).await;
            (members, facts)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (members, facts) = joined.expect("host check task");
        for i in members {
            let report = &mut reports[i];
            let settings = report
                .settings
                .as_ref()
                .expect("sshpyk kernels have settings");
            let own = std::mem::take(&mut report.checks);
            report.checks = checks::kernel(settings, &facts, own);
        }
    }
}

/// Exit status: an error naming the kernels with (x) rows.
fn outcome(reports: &[KernelReport]) -> Result<()> {
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
