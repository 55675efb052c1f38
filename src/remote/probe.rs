//! One ssh round trip that learns what `list` and `add` check on the remote: the system, and for
//! each remote python whether it has jupyter_client and which kernelspecs it sees.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ssh::Master;

const PROBE: &str = include_str!("probe.py");

const SCRIPT: &str = r#"probe=$1; shift
echo "sshpyk-uname $(uname -a)"
for py in "$@"; do
  case $py in "~/"*) exe=$HOME/${py#"~/"};; *) exe=$py;; esac
  if [ -d "$exe" ]; then out=directory
  elif [ -x "$exe" ]; then out=$("$exe" -c "$probe" 2>&1 | tr '\n' ' '); else out=missing; fi
  printf 'sshpyk-python\t%s\t%s\n' "$py" "$out"
done"#;

#[derive(Debug, Clone, Default)]
pub struct RemoteFacts {
    pub uname: String,
    /// Keyed by the python path as configured.
    pub pythons: BTreeMap<String, PythonProbe>,
}

/// What one configured remote python turned out to be.
#[derive(Debug, Clone)]
pub enum PythonProbe {
    Missing,
    /// A directory (an environment given where its interpreter was meant).
    Directory,
    /// It exists but the probe did not run (the message says why).
    Broken(String),
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
pub struct PythonFacts {
    pub python: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub jupyter_client: Option<String>,
    #[serde(default)]
    pub jupyter_client_error: Option<String>,
    #[serde(default)]
    pub kernels: BTreeMap<String, RemoteKernelspec>,
    #[serde(default)]
    pub runtime_dir: String,
    #[serde(default)]
    pub runtime_dir_writable: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RemoteKernelspec {
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub language: String,
    pub interrupt_mode: Option<String>,
}

impl PythonFacts {
    pub fn kernel(&self, name: &str) -> Option<&RemoteKernelspec> {
        self.kernels
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k)| k)
    }

    pub fn kernel_names(&self) -> String {
        self.kernels.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Runs the probe for `pythons` over the (already open) master.
pub async fn probe(master: &Master, pythons: &[&str]) -> Result<RemoteFacts> {
    let mut args = vec![PROBE];
    args.extend_from_slice(pythons);
    let output = super::run_sh(master, SCRIPT, &args).await?;
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
            let Some((py, out)) = rest.split_once('\t') else {
                continue;
            };
            facts
                .pythons
                .insert(py.to_string(), PythonProbe::parse(out.trim()));
        }
    }
    Ok(facts)
}
