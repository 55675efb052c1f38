//! Jupyter kernelspecs: where Jupyter looks for them, and the kernel.json model, which keeps
//! the sshpyk settings ([`crate::settings`]) under one versioned key of its `metadata`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::settings::{Settings, SETTINGS_VERSION};

/// The key under `metadata` that holds our settings; its `version` says how to read them.
pub(crate) const METADATA_KEY: &str = "sshpyk";

/// A kernel.json, keeping fields we do not know so that editing never loses them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KernelJson {
    pub(crate) argv: Vec<String>,
    pub(crate) display_name: String,
    #[serde(default)]
    pub(crate) language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interrupt_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub(crate) metadata: Map<String, Value>,
    #[serde(flatten)]
    pub(crate) other: Map<String, Value>,
}

impl KernelJson {
    /// Our settings, if sshpyk wrote this kernelspec.
    pub(crate) fn settings(&self) -> Option<Result<Settings>> {
        let value = self.metadata.get(METADATA_KEY)?;
        Some(
            serde_json::from_value::<Settings>(value.clone())
                .map_err(|e| Error::Invalid(format!("sshpyk settings cannot be read: {e}")))
                .and_then(|s| {
                    if s.version == SETTINGS_VERSION {
                        s.check_timeouts().map(|()| s)
                    } else {
                        Err(Error::Invalid(format!(
                            "sshpyk settings version {} is not supported by this sshpyk (expects {SETTINGS_VERSION}); upgrade sshpyk",
                            s.version
                        )))
                    }
                }),
        )
    }

    pub(crate) fn set_settings(&mut self, settings: &Settings) {
        let value = serde_json::to_value(settings).expect("settings serialize");
        self.metadata.insert(METADATA_KEY.into(), value);
    }
}

/// A kernelspec found on disk.
#[derive(Debug, Clone)]
pub(crate) struct Kernelspec {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) spec: KernelJson,
}

impl Kernelspec {
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let file = dir.join("kernel.json");
        let text = std::fs::read_to_string(&file)
            .map_err(Error::io(format!("cannot read {}", file.display())))?;
        let spec = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{} is not a valid kernel.json: {e}",
                file.display()
            ))
        })?;
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        Ok(Kernelspec {
            name,
            dir: dir.to_owned(),
            spec,
        })
    }

    /// Its sshpyk settings; when sshpyk did not write it, an error naming the kernel and
    /// `instead`, what to do instead.
    pub(crate) fn sshpyk_settings(&self, instead: &str) -> Result<Settings> {
        self.spec.settings().ok_or_else(|| {
            Error::Invalid(format!(
                "kernel '{}' was not written by sshpyk; {instead}",
                self.name
            ))
        })?
    }
}

/// Jupyter allows letters, digits, `.`, `_` and `-` in kernel names.
pub(crate) fn validate_kernel_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "kernel name '{name}' is invalid: use only letters, digits, '.', '_' and '-'"
        )))
    }
}

/// The data dirs in Jupyter's search order (see [`super::paths`]).
pub(crate) fn search_path() -> Result<Vec<PathBuf>> {
    super::paths::data_dirs()
}

/// Every kernelspec Jupyter would see, the first of each name winning as in Jupyter.
pub(crate) fn find_all() -> Result<Vec<Kernelspec>> {
    let mut found: Vec<Kernelspec> = Vec::new();
    for data_dir in search_path()? {
        let Ok(entries) = std::fs::read_dir(data_dir.join("kernels")) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("kernel.json").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_lowercase();
            if found.iter().any(|k| k.name.to_lowercase() == name) {
                continue;
            }
            match Kernelspec::read(&dir) {
                Ok(k) => found.push(k),
                Err(e) => tracing::warn!("skipping {}: {e}", dir.display()),
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The kernelspec of that name that Jupyter would use.
pub(crate) fn find(name: &str) -> Result<Kernelspec> {
    find_all()?
        .into_iter()
        .find(|k| k.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "kernel '{name}' not found; `sshpyk list` shows the kernels Jupyter sees"
            ))
        })
}

/// Writes `<data dir>/kernels/<name>/kernel.json` so that no reader ever sees a half-written
/// file: a fresh spec is built in a temporary sibling directory and renamed into place.
pub(crate) fn write_new(
    data_dir: &Path,
    name: &str,
    spec: &KernelJson,
    replace: bool,
) -> Result<PathBuf> {
    let kernels = data_dir.join("kernels");
    std::fs::create_dir_all(&kernels)
        .map_err(Error::io(format!("cannot create {}", kernels.display())))?;
    let target = kernels.join(name);
    if target.exists() && !replace {
        return Err(Error::Invalid(format!(
            "kernel '{name}' already exists in {}; pass --replace to overwrite it, or choose another --kernel-name",
            kernels.display()
        )));
    }
    let staging = tempfile::Builder::new()
        .prefix(".sshpyk-")
        .tempdir_in(&kernels)
        .map_err(Error::io(format!("cannot write in {}", kernels.display())))?;
    write_json(&staging.path().join("kernel.json"), spec)?;
    std::fs::set_permissions(
        staging.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(Error::io("cannot set kernelspec permissions"))?;
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .map_err(Error::io(format!("cannot replace {}", target.display())))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &target).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        Error::Io {
            context: format!("cannot create {}", target.display()),
            source: e,
        }
    })?;
    Ok(target)
}

/// Rewrites an existing kernel.json atomically (write a sibling, then rename over it).
pub(crate) fn rewrite(dir: &Path, spec: &KernelJson) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".kernel.json.")
        .tempfile_in(dir)
        .map_err(Error::io(format!("cannot write in {}", dir.display())))?;
    write_json(tmp.path(), spec)?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(Error::io("cannot set kernel.json permissions"))?;
    tmp.persist(dir.join("kernel.json"))
        .map_err(|e| Error::Io {
            context: format!("cannot replace {}/kernel.json", dir.display()),
            source: e.error,
        })?;
    Ok(())
}

fn write_json(path: &Path, spec: &KernelJson) -> Result<()> {
    let mut text = serde_json::to_string_pretty(spec).expect("kernel.json serializes");
    text.push('\n');
    std::fs::write(path, text).map_err(Error::io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_follow_jupyter_rules() {
        for ok in ["ssh_gpu_python3", "a.b-c", "X1"] {
            validate_kernel_name(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "é", "a:b"] {
            assert!(validate_kernel_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_kernelspec_holds_valid_settings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernelspecs/ssh_gpu_python3");
        let spec = Kernelspec::read(&dir).unwrap();
        let settings = spec.spec.settings().expect("an sshpyk kernelspec").unwrap();
        assert_eq!(settings.ssh_host_alias, "gpu");
        assert_eq!(settings.mounts[0].options, ["follow_symlinks"]);
        assert_eq!(
            spec.spec.argv.last().map(String::as_str),
            Some("{connection_file}")
        );
    }

    #[test]
    fn hand_edited_timeouts_out_of_range_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernelspecs/ssh_gpu_python3");
        let mut spec = Kernelspec::read(&dir).unwrap().spec;
        let mut settings = spec.settings().unwrap().unwrap();
        settings.orphan_timeout = 0.0;
        spec.set_settings(&settings);
        let err = spec.settings().unwrap().unwrap_err().to_string();
        assert!(err.contains("orphan_timeout = 0 is out of range"), "{err}");
    }

    #[test]
    fn unknown_kernel_json_fields_survive_a_round_trip() {
        let text = r#"{"argv":["x"],"display_name":"d","language":"python","env":{"A":"1"},"metadata":{"other":1}}"#;
        let spec: KernelJson = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["env"]["A"], "1");
        assert_eq!(back["metadata"]["other"], 1);
        assert!(spec.settings().is_none());
    }

    #[test]
    fn a_kernelspec_sshpyk_did_not_write_is_named_with_what_to_do_instead() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernelspecs/ssh_gpu_python3");
        let mut found = Kernelspec::read(&dir).unwrap();
        assert!(found.sshpyk_settings("do this").is_ok());
        found.spec.metadata.clear();
        let err = found.sshpyk_settings("do this").unwrap_err().to_string();
        assert_eq!(
            err,
            "kernel 'ssh_gpu_python3' was not written by sshpyk; do this"
        );
    }
}
