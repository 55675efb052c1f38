//! What a cloud mount is (kept in the kernelspec), the keys each backend takes, and the rclone
//! config it renders to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The section name of a rendered config: the source is `sshpyk:<path>`.
const SECTION: &str = "sshpyk";
/// The secrets key that holds a raw rclone config.
pub const RAW_CONFIG: &str = "rclone_config";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    S3,
    Gcs,
    Azureblob,
    Sftp,
    Webdav,
    Dropbox,
    /// A raw rclone config given with `--rclone-config` (any backend).
    #[value(skip)]
    Rclone,
}

/// One rclone config field a backend accepts.
struct Key {
    name: &'static str,
    /// Only from `--creds`, never `--set` (so never in kernel.json).
    secret: bool,
    /// rclone keeps it obscured (`rclone obscure`) in its config.
    obscured: bool,
    /// A local file whose content sshpyk ships under this other key.
    file_for: Option<&'static str>,
}

const fn plain(name: &'static str) -> Key {
    Key {
        name,
        secret: false,
        obscured: false,
        file_for: None,
    }
}

const fn secret(name: &'static str) -> Key {
    Key {
        name,
        secret: true,
        obscured: false,
        file_for: None,
    }
}

const fn password(name: &'static str) -> Key {
    Key {
        name,
        secret: true,
        obscured: true,
        file_for: None,
    }
}

const fn key_file(name: &'static str, content_key: &'static str) -> Key {
    Key {
        name,
        secret: true,
        obscured: false,
        file_for: Some(content_key),
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::S3 => "s3",
            Backend::Gcs => "gcs",
            Backend::Azureblob => "azureblob",
            Backend::Sftp => "sftp",
            Backend::Webdav => "webdav",
            Backend::Dropbox => "dropbox",
            Backend::Rclone => "rclone config",
        }
    }

    fn keys(self) -> &'static [Key] {
        const S3: &[Key] = &[
            plain("access_key_id"),
            secret("secret_access_key"),
            secret("session_token"),
            plain("region"),
            plain("provider"),
            plain("endpoint"),
        ];
        const GCS: &[Key] = &[
            secret("service_account_credentials"),
            key_file("service_account_file", "service_account_credentials"),
            plain("project_number"),
        ];
        const AZUREBLOB: &[Key] = &[
            plain("account"),
            secret("key"),
            secret("sas_url"),
            plain("endpoint"),
        ];
        const SFTP: &[Key] = &[
            plain("host"),
            plain("user"),
            plain("port"),
            password("pass"),
            key_file("key_file", "key_pem"),
        ];
        const WEBDAV: &[Key] = &[
            plain("url"),
            plain("vendor"),
            plain("user"),
            password("pass"),
            secret("bearer_token"),
        ];
        const DROPBOX: &[Key] = &[secret("token")];
        match self {
            Backend::S3 => S3,
            Backend::Gcs => GCS,
            Backend::Azureblob => AZUREBLOB,
            Backend::Sftp => SFTP,
            Backend::Webdav => WEBDAV,
            Backend::Dropbox => DROPBOX,
            Backend::Rclone => &[],
        }
    }

    /// Keys of which at least one group must be complete.
    fn required(self) -> &'static [&'static [&'static str]] {
        match self {
            Backend::S3 => &[&["access_key_id", "secret_access_key"]],
            Backend::Gcs => &[&["service_account_credentials"]],
            Backend::Azureblob => &[&["account", "key"], &["sas_url"]],
            Backend::Sftp => &[&["host", "pass"], &["host", "key_pem"]],
            Backend::Webdav => &[&["url"]],
            Backend::Dropbox => &[&["token"]],
            Backend::Rclone => &[],
        }
    }

    fn key(self, name: &str) -> Result<&'static Key> {
        self.keys().iter().find(|k| k.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.keys().iter().map(|k| k.name).collect();
            Error::Invalid(format!(
                "{} has no key '{name}'; known keys: {}",
                self.name(),
                known.join(", ")
            ))
        })
    }
}

/// A cloud mount as the kernelspec keeps it: no secret, only the name of its secrets file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudMount {
    /// The mount point on the remote.
    pub remote: String,
    pub backend: Backend,
    /// The path inside the backend (`bucket/prefix`), or `REMOTE:PATH` of a raw config.
    #[serde(default)]
    pub source: String,
    /// Non-secret rclone config fields.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub rw: bool,
    /// Extra `rclone mount` flags.
    #[serde(default)]
    pub rclone_flags: Vec<String>,
    /// The file under sshpyk's secrets dir ([`super::secrets`]).
    pub secrets: String,
}

/// What the remote needs to mount: the config (secret) and the rclone source.
pub struct Rendered {
    pub config: String,
    pub source: String,
    pub flags: Vec<String>,
}

impl CloudMount {
    /// `backend:source` as users read it.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Rclone => self.source.clone(),
            b => format!("{}:{}", b.name(), self.source),
        }
    }

    /// Checks `--set` keys (known, not secret) and turns `--creds` into what the secrets file
    /// keeps: known keys, key files read into their content keys.
    pub fn check_settings(backend: Backend, settings: &BTreeMap<String, String>) -> Result<()> {
        for name in settings.keys() {
            let key = backend.key(name)?;
            if key.secret {
                return Err(Error::Invalid(format!(
                    "{name} is a secret: give it in a JSON object with --creds FILE (or --creds - on stdin), not with --set"
                )));
            }
        }
        Ok(())
    }

    pub fn read_creds(
        backend: Backend,
        creds: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (name, value) in creds {
            let key = backend.key(&name)?;
            match key.file_for {
                Some(content_key) => {
                    let text = std::fs::read_to_string(&value).map_err(|e| {
                        Error::Invalid(format!(
                            "cannot read {name} {value}: {e}; give a readable local file"
                        ))
                    })?;
                    out.insert(content_key.to_string(), text);
                }
                None => {
                    out.insert(name, value);
                }
            }
        }
        Ok(out)
    }

    /// The rclone config, source and mount flags for this mount with `secrets`.
    pub fn render(&self, secrets: &BTreeMap<String, String>) -> Result<Rendered> {
        let flags = self.mount_flags();
        if self.backend == Backend::Rclone {
            let config = secrets.get(RAW_CONFIG).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "the secrets of the mount at {} hold no rclone config; add the mount again",
                    self.remote
                ))
            })?;
            return Ok(Rendered {
                config,
                source: self.source.clone(),
                flags,
            });
        }
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        if self.backend == Backend::S3 {
            fields.insert("provider", "AWS".into());
        }
        for (name, value) in self.settings.iter().chain(secrets) {
            let key = self.backend.keys().iter().find(|k| k.name == name);
            let value = match (name.as_str(), key) {
                ("key_pem", _) => value.trim_end().replace('\n', "\\n"),
                ("service_account_credentials", _) => one_line_json(value)?,
                (_, Some(k)) if k.obscured => super::obscure::obscure(value),
                _ => value.clone(),
            };
            if value.contains(['\n', '\r']) {
                return Err(Error::Invalid(format!(
                    "{name} holds a line break; rclone config values are single lines"
                )));
            }
            fields.insert(name, value);
        }
        let complete = self
            .backend
            .required()
            .iter()
            .any(|group| group.iter().all(|k| fields.contains_key(k)));
        if !complete {
            let groups: Vec<String> = self
                .backend
                .required()
                .iter()
                .map(|g| g.join(" + "))
                .collect();
            return Err(Error::Invalid(format!(
                "{} needs {} (secrets with --creds, the rest with --set)",
                self.backend.name(),
                groups.join(", or ")
            )));
        }
        let mut config = format!("[{SECTION}]\ntype = {}\n", self.backend.name());
        for (name, value) in fields {
            config.push_str(&format!("{name} = {value}\n"));
        }
        Ok(Rendered {
            config,
            source: format!("{SECTION}:{}", self.source),
            flags,
        })
    }

    /// `--read-only` unless `rw`; with `rw`, a write cache and a 1 s write-back delay (not
    /// rclone's 5 s: unmounting waits for the uploads) unless the user chose them.
    fn mount_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        let chose = |flag: &str| self.rclone_flags.iter().any(|f| f.starts_with(flag));
        if !self.rw {
            flags.push("--read-only".to_string());
        } else {
            if !chose("--vfs-cache-mode") {
                flags.extend(["--vfs-cache-mode".to_string(), "writes".to_string()]);
            }
            if !chose("--vfs-write-back") {
                flags.extend(["--vfs-write-back".to_string(), "1s".to_string()]);
            }
        }
        flags.extend(self.rclone_flags.iter().cloned());
        flags
    }
}

fn one_line_json(text: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::Invalid(format!(
            "service_account_credentials is not JSON ({e}); give the service account's key file"
        ))
    })?;
    Ok(value.to_string())
}

/// The section names of a raw rclone config.
pub fn config_sections(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string)
        .collect()
}

/// Flags that would break how sshpyk runs rclone.
pub fn check_rclone_flag(flag: &str) -> Result<()> {
    const OURS: [&str; 4] = ["--config", "--daemon", "--cache-dir", "--log-file"];
    if !flag.starts_with("--") {
        return Err(Error::Invalid(format!(
            "--rclone-flag '{flag}' is not a long rclone flag; write it as --rclone-flag=--name=value"
        )));
    }
    if OURS
        .iter()
        .any(|o| flag == *o || flag.starts_with(&format!("{o}=")))
    {
        return Err(Error::Invalid(format!(
            "--rclone-flag '{flag}' is set by sshpyk itself; leave it out"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(backend: Backend, settings: &[(&str, &str)]) -> CloudMount {
        CloudMount {
            remote: "/mnt/x".into(),
            backend,
            source: "bucket/dir".into(),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rw: false,
            rclone_flags: vec![],
            secrets: "s".into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_and_secret_keys_are_refused_by_name() {
        let err = CloudMount::check_settings(Backend::S3, &map(&[("bucket", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3 has no key 'bucket'"), "{err}");
        assert!(
            err.contains("secret_access_key, session_token, region"),
            "{err}"
        );
        let err = CloudMount::check_settings(Backend::S3, &map(&[("secret_access_key", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--creds"), "{err}");
    }

    #[test]
    fn s3_renders_with_aws_by_default_and_read_only() {
        let m = mount(Backend::S3, &[("region", "eu-west-1")]);
        let r = m
            .render(&map(&[
                ("access_key_id", "AK"),
                ("secret_access_key", "SK"),
            ]))
            .unwrap();
        assert_eq!(
            r.config,
            "[sshpyk]\ntype = s3\naccess_key_id = AK\nprovider = AWS\nregion = eu-west-1\nsecret_access_key = SK\n"
        );
        assert_eq!(r.source, "sshpyk:bucket/dir");
        assert_eq!(r.flags, ["--read-only"]);
        let err = m.render(&map(&[])).err().unwrap().to_string();
        assert!(
            err.contains("s3 needs access_key_id + secret_access_key"),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_obscured_and_rw_gets_a_write_cache() {
        let mut m = mount(Backend::Webdav, &[("url", "http://h/"), ("user", "u")]);
        m.rw = true;
        let r = m.render(&map(&[("pass", "hunter2")])).unwrap();
        let line = r.config.lines().find(|l| l.starts_with("pass = ")).unwrap();
        assert_eq!(super::super::obscure::reveal(&line[7..]), "hunter2");
        assert!(!r.config.contains("hunter2"));
        assert_eq!(
            r.flags,
            ["--vfs-cache-mode", "writes", "--vfs-write-back", "1s"]
        );
        m.rclone_flags = vec!["--vfs-cache-mode=full".into(), "--vfs-write-back=9s".into()];
        assert_eq!(
            m.render(&map(&[("pass", "p")])).unwrap().flags,
            ["--vfs-cache-mode=full", "--vfs-write-back=9s"]
        );
    }

    #[test]
    fn key_files_are_read_here_and_shipped_as_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        std::fs::write(&key, "-----BEGIN KEY-----\nabc\n-----END KEY-----\n").unwrap();
        let creds =
            CloudMount::read_creds(Backend::Sftp, map(&[("key_file", key.to_str().unwrap())]))
                .unwrap();
        assert_eq!(creds.keys().collect::<Vec<_>>(), ["key_pem"]);
        let r = mount(Backend::Sftp, &[("host", "h")])
            .render(&creds)
            .unwrap();
        assert!(r
            .config
            .contains("key_pem = -----BEGIN KEY-----\\nabc\\n-----END KEY-----\n"));
        let err = CloudMount::read_creds(Backend::Sftp, map(&[("key_file", "/nonexistent")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read key_file /nonexistent"), "{err}");
    }

    #[test]
    fn raw_config_sections_and_flags() {
        assert_eq!(
            config_sections("[a]\ntype = s3\n\n [b] \nx = y\n"),
            ["a", "b"]
        );
        check_rclone_flag("--transfers=8").unwrap();
        assert!(check_rclone_flag("--config=/x").is_err());
        assert!(check_rclone_flag("-v").is_err());
    }
}
