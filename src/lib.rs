//! sshpyk: run Jupyter kernels on remote machines over OpenSSH, as if they were local.
//!
//! # Layout
//!
//! By flow. No top-level module imports one that imports it back, so each can be read with
//! only what it imports in mind. README.rst's "Development" section holds the same map.
//!
//! **Edge.** `main.rs` parses ([`cli`]) and runs [`cmd`], one file per subcommand, which maps
//! every failure to one [`error::Error`] and its documented exit code.
//!
//! **Launch** (what Jupyter starts from kernel.json), in the order a start uses them:
//! - [`launcher`]: start, supervise, reconnect, stop; `mounts` owns a running kernel's mounts,
//!   `live` answers control requests.
//! - [`jupyter`]: the kernelspec and connection file, Jupyter's paths, our wire client.
//! - [`settings`]: a kernel's sshpyk settings, their ranges, defaults and local checks.
//! - [`ssh`]: the ssh config, the ControlMaster and its mux protocol, sh on the remote from any
//!   login shell (`shell`), the remote python after the user's init snippet (`init`).
//! - [`slurm`]: allocation on a login node, its scripts and the relay that holds the step.
//! - [`supervisor`]: the remote supervisor and its session: frames, resumable streams,
//!   the reattach; the Python it runs beside its Rust.
//! - [`ports`]: the five local ports, each connection a stream of the supervisor's session.
//! - [`control`]: each launcher's control socket (`ps`, live mount changes).
//! - [`parent`]: the process that started the kernel (`JPY_PARENT_PID`).
//!
//! **Manage** (`add`, `edit`, `list`, `delete`, `ps`, `logs`, `connect`):
//! - [`probe`]: one round trip that learns what `add` and `list` check on the remote.
//! - [`python_sshpyk`]: the Python sshpyk's kernelspecs (`edit --adopt`) and living beside it.
//! - [`logs`]: stderr lines and each launcher run's log file.
//!
//! **Mounts** ([`mounts`], one module per direction):
//! - `local_on_remote`: a local directory on the remote, synced or served over SFTP.
//! - `remote_on_local`: `sshpyk mount`, a remote directory here with the local sshfs.
//! - `cloud_on_remote`: rclone on the remote, its backends and secrets at rest.
//!
//! **Shared ground:** [`runtime`] (the private runtime dir), [`bounded`] (bounded reads of what
//! a remote sends), [`utc`] (calendar dates), [`error`].
//!
//! `pub` only where chosen: what `main.rs` and the integration tests use (`cli::Cli`,
//! `cmd::run`, `error`, `jupyter`'s client and connection file, `mounts::cloud_on_remote`'s
//! backends). Everything else is `pub(crate)`, so the dead-code lint sees all of it.
//!
//! Remote-side code (sh, Python) sits in its own files beside the module that embeds it with
//! `include_str!`: `ssh/*.sh`, `probe/`, `slurm/`, `supervisor/*.py`,
//! `mounts/local_on_remote/{wrapper*.sh, sync/agent.py}`.

pub(crate) mod bounded;
pub mod cli;
pub mod cmd;
pub(crate) mod control;
pub mod error;
pub mod jupyter;
pub(crate) mod launcher;
pub(crate) mod logs;
pub mod mounts;
pub(crate) mod parent;
pub(crate) mod ports;
pub(crate) mod probe;
pub(crate) mod python_sshpyk;
pub(crate) mod runtime;
pub(crate) mod settings;
pub(crate) mod slurm;
pub(crate) mod ssh;
pub(crate) mod supervisor;
pub(crate) mod utc;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file under src/ by the name README's map gives it: a module's file stem (its
    /// folder for a `mod.rs`), a script's whole name; `wrapper*.sh` stands for the mount
    /// wrapper's scripts.
    fn names(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                out.push(format!("{name}/"));
                names(&path, out);
            } else if name.starts_with("wrapper") && name.ends_with(".sh") {
                out.push("wrapper*.sh".into());
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if stem != "mod" {
                    out.push(stem.into());
                }
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn the_readme_map_names_every_file_and_the_crate_map_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.rst")).unwrap();
        let start = readme.find("``src/`` has one module per concept").unwrap();
        let end = start + readme[start..].find("``build.rs``").unwrap();
        let map = &readme[start..end];
        let mut all = Vec::new();
        names(&root.join("src"), &mut all);
        let missing: Vec<_> = all.iter().filter(|n| !map.contains(n.as_str())).collect();
        assert!(missing.is_empty(), "README's module map lacks {missing:?}");

        let lib = include_str!("lib.rs");
        let (doc, items) = lib.split_once("\n\npub").unwrap();
        let declarations = items.split("#[cfg(test)]").next().unwrap();
        for line in declarations.lines() {
            let module = line.split("mod ").nth(1).and_then(|m| m.strip_suffix(';'));
            let Some(module) = module else { continue };
            assert!(
                doc.contains(&format!("[`{module}`]")),
                "the crate's layout map lacks {module}"
            );
        }
    }
}
