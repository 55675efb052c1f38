//! One ssh round trip that learns what `list` and `add` check on the remote: the system, and for
//! each remote python whether it has jupyter_client, which kernelspecs it sees, and whether the
//! kernel's working directory exists. A python behind an init snippet is probed through that
//! snippet (one more session each), as the launcher will start it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::ssh::init::python_command;
use crate::ssh::init::{InitFailure, InitWatch};
use crate::ssh::shell::{run_command, run_sh};
use crate::ssh::Master;

const PROBE: &str = include_str!("python.py");

/// Arguments: the probe, then pairs of python and working directory ("" for none).
const SCRIPT: &str = include_str!("host.sh");

/// One way a kernelspec starts its remote python: the python, the init snippet before it, and
/// the kernel's working directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ProbeTarget {
    pub(crate) python: String,
    pub(crate) init: Option<String>,
    pub(crate) cwd: Option<String>,
}

impl ProbeTarget {
    pub(crate) fn of(settings: &Settings) -> Self {
        ProbeTarget {
            python: settings.remote_python.clone(),
            init: settings.remote_init.clone(),
            cwd: settings.remote_cwd.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteFacts {
    pub(crate) uname: String,
    pub(crate) pythons: BTreeMap<ProbeTarget, PythonProbe>,
}

impl RemoteFacts {
    /// What the python of these settings turned out to be.
    pub(crate) fn python(&self, settings: &Settings) -> Option<&PythonProbe> {
        self.pythons.get(&ProbeTarget::of(settings))
    }
}

/// What one configured remote python turned out to be.
#[derive(Debug, Clone)]
pub(crate) enum PythonProbe {
    Missing,
    /// A directory (an environment given where its interpreter was meant).
    Directory,
    /// It exists but the probe did not run (the message says why).
    Broken(String),
    /// The init snippet before it failed.
    InitFailed(InitFailure),
    Found(PythonFacts),
}

impl PythonProbe {
    fn parse(out: &str) -> Self {
        match out {
            "missing" => return PythonProbe::Missing,
            "directory" => return PythonProbe::Directory,
            _ => {}
        }
        let facts = out
            .split_once("SSHPYK-FACTS")
            .and_then(|(_, json)| serde_json::from_str(json.trim()).ok());
        match facts {
            Some(facts) => PythonProbe::Found(facts),
            None => PythonProbe::Broken(out.chars().take(300).collect()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PythonFacts {
    #[serde(default)]
    pub(crate) version: String,
    #[serde(default)]
    pub(crate) jupyter_client: Option<String>,
    #[serde(default)]
    pub(crate) jupyter_client_error: Option<String>,
    #[serde(default)]
    pub(crate) kernels: BTreeMap<String, RemoteKernelspec>,
    #[serde(default)]
    pub(crate) runtime_dir: String,
    #[serde(default)]
    pub(crate) runtime_dir_writable: bool,
    /// The working directory asked for (`~` expanded), and whether it is a directory.
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    #[serde(default)]
    pub(crate) cwd_exists: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RemoteKernelspec {
    #[serde(default)]
    pub(crate) argv: Vec<String>,
    #[serde(default)]
    pub(crate) display_name: String,
    #[serde(default)]
    pub(crate) language: String,
    pub(crate) interrupt_mode: Option<String>,
}

impl PythonFacts {
    pub(crate) fn kernel(&self, name: &str) -> Option<&RemoteKernelspec> {
        self.kernels
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k)| k)
    }

    pub(crate) fn kernel_names(&self) -> String {
        self.kernels.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Runs the probe for `targets` over the (already open) master: those without an init snippet
/// in one session, the others one session each, one after the other (sshd's stock limit of 10
/// sessions per connection is shared with kernels that run).
pub(crate) async fn probe(master: &Master, targets: &[ProbeTarget]) -> Result<RemoteFacts> {
    let plain: Vec<&ProbeTarget> = targets.iter().filter(|t| t.init.is_none()).collect();
    let mut args = vec![PROBE];
    for target in &plain {
        args.push(&target.python);
        args.push(target.cwd.as_deref().unwrap_or(""));
    }
    let output = run_sh(master, SCRIPT, &args).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.success() && !stdout.contains("sshpyk-uname") {
        return Err(Error::Ssh(format!(
            "cannot run commands on '{}': {}",
            master.alias(),
            crate::ssh::config::last_message(&String::from_utf8_lossy(&output.stderr))
        )));
    }
    let mut facts = RemoteFacts::default();
    for line in stdout.lines() {
        if let Some(uname) = line.strip_prefix("sshpyk-uname ") {
            facts.uname = uname.to_string();
        } else if let Some(rest) = line.strip_prefix("sshpyk-python\t") {
            let mut fields = rest.splitn(3, '\t');
            let (Some(py), Some(cwd), Some(out)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let target = ProbeTarget {
                python: py.to_string(),
                init: None,
                cwd: Some(cwd.to_string()).filter(|c| !c.is_empty()),
            };
            facts.pythons.insert(target, PythonProbe::parse(out.trim()));
        }
    }
    for target in targets.iter().filter(|t| t.init.is_some()) {
        let found = probe_after_init(master, target).await?;
        facts.pythons.insert(target.clone(), found);
    }
    Ok(facts)
}

/// Probes `target`'s python as the launcher starts it: after its init snippet, in a login shell.
async fn probe_after_init(master: &Master, target: &ProbeTarget) -> Result<PythonProbe> {
    let cwd = target.cwd.as_deref().unwrap_or("");
    let command = python_command(&target.python, &["-c", PROBE, cwd], target.init.as_deref());
    let output = run_command(master, &command).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut watch = InitWatch::default();
    for line in stdout.lines() {
        if let Some(failure) = watch.line(line) {
            return Ok(PythonProbe::InitFailed(failure));
        }
        if line == "sshpyk-no-python" {
            return Ok(PythonProbe::Missing);
        }
    }
    if let Some(failure) = watch.ended(output.status) {
        return Ok(PythonProbe::InitFailed(failure));
    }
    let facts = stdout.lines().find(|l| l.contains("SSHPYK-FACTS"));
    Ok(match facts {
        Some(line) => PythonProbe::parse(line),
        None => PythonProbe::Broken(
            crate::ssh::config::last_message(&String::from_utf8_lossy(&output.stderr))
                .chars()
                .take(300)
                .collect(),
        ),
    })
}
