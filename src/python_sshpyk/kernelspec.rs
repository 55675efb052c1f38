//! Kernelspecs written by the Python sshpyk (PyPI `sshpyk`, a jupyter_client provisioner):
//! `list` recognises them, `edit --adopt` turns one into ours.
//!
//! Its kernel.json runs `python sshpyk-kernel ...` and keeps its settings under
//! `metadata.kernel_provisioner` (`provisioner_name` "sshpyk-provisioner", settings in `config`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::jupyter::kernelspec::KernelJson;
use crate::settings::{Settings, SETTINGS_VERSION};

/// The provisioner name the Python sshpyk registers (its entry point).
const PROVISIONER_NAME: &str = "sshpyk-provisioner";

#[derive(Debug, Deserialize)]
struct Provisioner {
    provisioner_name: String,
    #[serde(default)]
    config: PythonSettings,
}

/// The Python sshpyk's settings (its `add` flags), as its kernel.json stores them.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct PythonSettings {
    #[serde(default)]
    pub(crate) ssh: Option<String>,
    #[serde(default)]
    pub(crate) ssh_host_alias: Option<String>,
    #[serde(default)]
    pub(crate) remote_python: Option<String>,
    #[serde(default)]
    pub(crate) remote_kernel_name: Option<String>,
    #[serde(default)]
    pub(crate) ssh_config: Option<String>,
    #[serde(default)]
    pub(crate) launch_timeout: Option<f64>,
    #[serde(default)]
    pub(crate) shutdown_timeout: Option<f64>,
    #[serde(default)]
    pub(crate) remote_pythonhome: Option<String>,
    #[serde(default)]
    pub(crate) remote_kernel_pythonhome: Option<String>,
}

/// The Python sshpyk's settings when it wrote this kernel.json.
pub(crate) fn settings_of(spec: &KernelJson) -> Option<PythonSettings> {
    let value = spec.metadata.get("kernel_provisioner")?;
    let provisioner = Provisioner::deserialize(value).ok()?;
    (provisioner.provisioner_name == PROVISIONER_NAME).then_some(provisioner.config)
}

/// Remove the Python sshpyk's own settings once adopted (Jupyter would otherwise still pick its
/// provisioner, which runs the Python sshpyk instead of our argv).
pub(crate) fn forget(spec: &mut KernelJson) {
    spec.metadata.remove("kernel_provisioner");
}

impl PythonSettings {
    /// One line for `list`: what it runs.
    pub(crate) fn summary(&self) -> String {
        format!(
            "ssh {} → {} kernel '{}'",
            self.ssh_host_alias.as_deref().unwrap_or("?"),
            self.remote_python.as_deref().unwrap_or("?"),
            self.remote_kernel_name.as_deref().unwrap_or("?")
        )
    }

    /// Our settings for the same kernel (alias, remote python and kernel, ssh client and config,
    /// timeouts), the rest taken from `defaults`; the error names the setting it lacks.
    pub(crate) fn to_settings(
        &self,
        defaults: Settings,
    ) -> std::result::Result<Settings, &'static str> {
        let ssh_config = match self.ssh_config.as_deref() {
            Some(path) if !path.is_empty() => expand_home(path),
            // It then let ssh use its default config file.
            _ => defaults.ssh_config.clone(),
        };
        Ok(Settings {
            version: SETTINGS_VERSION,
            ssh_host_alias: self.ssh_host_alias.clone().ok_or("ssh_host_alias")?,
            ssh_config,
            ssh: self
                .ssh
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or(defaults.ssh.clone()),
            remote_python: self.remote_python.clone().ok_or("remote_python")?,
            remote_kernel_name: self
                .remote_kernel_name
                .clone()
                .ok_or("remote_kernel_name")?,
            launch_timeout: self.launch_timeout.unwrap_or(defaults.launch_timeout),
            shutdown_timeout: self.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
            ..defaults
        })
    }

    /// Its settings that ours cannot carry over.
    pub(crate) fn dropped(&self) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        if self.remote_pythonhome.is_some() {
            dropped.push("remote_pythonhome");
        }
        if self.remote_kernel_pythonhome.is_some() {
            dropped.push("remote_kernel_pythonhome");
        }
        dropped
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the Python sshpyk 1.25's `add` writes it.
    const KERNEL_JSON: &str = r#"{
      "argv": ["/venv/bin/python3", "/venv/bin/sshpyk-kernel", "--SSHKernelApp.kernel_name=ssh_gpu_python3",
               "--KernelManager.connection_file='{connection_file}'"],
      "display_name": "GPU", "language": "python", "interrupt_mode": "message",
      "metadata": {"kernel_provisioner": {"provisioner_name": "sshpyk-provisioner", "config": {
        "ssh": null, "ssh_host_alias": "gpu", "remote_python": "/opt/env/bin/python",
        "remote_kernel_name": "python3", "ssh_config": "/home/me/.ssh/config", "launch_timeout": 45}}}
    }"#;

    #[test]
    fn its_kernel_json_becomes_our_settings() {
        let spec: KernelJson = serde_json::from_str(KERNEL_JSON).unwrap();
        let theirs = settings_of(&spec).expect("recognised");
        let defaults = crate::settings::defaults().unwrap();
        let ours = theirs.to_settings(defaults).unwrap();
        assert_eq!(ours.ssh_host_alias, "gpu");
        assert_eq!(ours.remote_python, "/opt/env/bin/python");
        assert_eq!(ours.remote_kernel_name, "python3");
        assert_eq!(ours.ssh_config, PathBuf::from("/home/me/.ssh/config"));
        assert_eq!(ours.ssh, "ssh");
        assert_eq!(ours.launch_timeout, 45.0);
        assert_eq!(ours.orphan_timeout, crate::settings::DEFAULT_ORPHAN_TIMEOUT);
        assert!(theirs.dropped().is_empty());
    }

    #[test]
    fn other_provisioners_are_not_taken_for_it() {
        let text = KERNEL_JSON.replace("sshpyk-provisioner", "other-provisioner");
        let spec: KernelJson = serde_json::from_str(&text).unwrap();
        assert!(settings_of(&spec).is_none());
    }
}
