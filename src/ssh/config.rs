//! The user's ssh config: which aliases it declares (parsed with ssh2-config) and what ssh will
//! really use for one of them (`ssh -G`, which knows Match, Include and tokens).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ssh2_config::{ParseRule, SshConfig};

use crate::error::{Error, Result};

/// The concrete `Host` aliases declared in a config file (patterns and negations excluded).
pub(crate) fn declared_aliases(config: &Path) -> Result<Vec<String>> {
    let file = std::fs::File::open(config).map_err(|e| {
        Error::Invalid(format!(
            "ssh config file {} cannot be read ({e}); create it or pass --ssh-config FILE",
            config.display()
        ))
    })?;
    let parsed = SshConfig::default()
        .parse(
            &mut BufReader::new(file),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| {
            Error::Invalid(format!(
                "ssh config file {} cannot be parsed: {e}; fix the file",
                config.display()
            ))
        })?;
    let mut aliases: Vec<String> = parsed
        .get_hosts()
        .iter()
        .flat_map(|h| h.pattern.iter())
        .filter(|c| !c.negated && !c.pattern.contains(['*', '?', '!']))
        .map(|c| c.pattern.clone())
        .collect();
    aliases.dedup();
    Ok(aliases)
}

/// Fails with the fix when `alias` is not a `Host` of `config`.
pub(crate) fn require_alias(config: &Path, alias: &str) -> Result<()> {
    if declared_aliases(config)?.iter().any(|a| a == alias) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ssh alias '{alias}' is not defined in {}; add a 'Host {alias}' block or pass the right --ssh-config",
            config.display()
        )))
    }
}

/// The effective settings of `ssh -G`: lowercase keys, multi-valued keys keep every value.
#[derive(Debug, Clone, Default)]
pub(crate) struct EffectiveConfig {
    values: BTreeMap<String, Vec<String>>,
}

impl EffectiveConfig {
    pub(crate) async fn query(ssh: &str, config: &Path, alias: &str) -> Result<Self> {
        Self::query_with(ssh, config, alias, &[]).await
    }

    /// `ssh -G` with extra `-o` options (which take precedence over the config file).
    pub(crate) async fn query_with(
        ssh: &str,
        config: &Path,
        alias: &str,
        options: &[String],
    ) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(ssh);
        cmd.arg("-G").arg("-T").arg("-F").arg(config);
        for option in options {
            cmd.arg("-o").arg(option);
        }
        cmd.arg(alias);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(10), cmd.output())
            .await
            .map_err(|_| Error::Ssh(format!("`{ssh} -G {alias}` did not answer within 10 s")))?
            .map_err(|e| spawn_error(ssh, e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(Error::Invalid(format!(
                "ssh cannot read the config for '{alias}' in {}: {}",
                config.display(),
                last_message(&stderr)
            )));
        }
        Ok(Self::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    pub(crate) fn parse(text: &str) -> Self {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(' ') {
                values
                    .entry(key.to_ascii_lowercase())
                    .or_default()
                    .push(value.to_string());
            }
        }
        EffectiveConfig { values }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub(crate) fn all(&self, key: &str) -> &[String] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The ControlPath the user configured, if any (`ssh -G` prints `none` when unset).
    pub(crate) fn control_path(&self) -> Option<&str> {
        self.get("controlpath").filter(|p| *p != "none")
    }
}

/// The error for an ssh binary that cannot be started.
pub(crate) fn spawn_error(ssh: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::Invalid(format!(
            "ssh client '{ssh}' not found; install OpenSSH or pass --ssh PATH"
        ))
    } else {
        Error::Local(format!("cannot run ssh client '{ssh}': {e}"))
    }
}

pub(crate) fn last_message(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("debug"))
        .unwrap_or("no message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_aliases_skip_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "Host gpu gpu2 *.lan !bad\n  HostName 10.0.0.1\nHost *\n  ServerAliveInterval 5\nMatch host x\n  User y\n").unwrap();
        assert_eq!(declared_aliases(&path).unwrap(), ["gpu", "gpu2"]);
        assert!(require_alias(&path, "gpu").is_ok());
        let err = require_alias(&path, "foo").unwrap_err().to_string();
        assert!(err.contains("ssh alias 'foo' is not defined in"), "{err}");
    }

    #[test]
    fn effective_config_keeps_every_value() {
        let c = EffectiveConfig::parse(
            "hostname h\nidentityfile a\nidentityfile b\ncontrolpath none\n",
        );
        assert_eq!(c.get("hostname"), Some("h"));
        assert_eq!(c.all("identityfile"), ["a", "b"]);
        assert_eq!(c.control_path(), None);
    }
}
