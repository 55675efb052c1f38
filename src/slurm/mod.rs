//! Kernels on Slurm compute nodes, through the login node (the ssh alias).
//!
//! One session on the login node runs `slurm.sh`: it adopts the running allocation named
//! `sshpyk-<kernel id>` (a restart of the same kernel), or submits one (`sbatch` with the user's
//! options, its batch script the keeper below), reports the job's phases as lines before the
//! supervisor's marker, then `exec`s `srun --overlap --unbuffered` into the job with the usual
//! remote python command, under `slurm_relay.py`. So the supervisor runs on the node with the
//! step's stdio as its session: the frames (key included) travel over srun's pipes through the
//! relay on the login node, the node opens no port, and no `pam_slurm_adopt` is needed.
//!
//! Lifetime: the relay holds the step's stdio, so the step outlives a lost connection and the
//! launcher re-attaches through the relay's socket, as to a plain supervisor. The kernel ends
//! with its step: a launcher gone closes its session, the relay closes the step's stdin, the
//! supervisor ends the kernel; after a network loss the supervisor's lease runs out and the
//! relay cancels the job at once (nobody will restart into it). Otherwise the allocation is
//! ended by its own batch
//! script once no kernel step has run for the grace (`slurm_keeper.sh`), so a restart within the
//! grace does not queue again and nothing depends on the launcher still being there. A start
//! that fails after submitting cancels the job at once; a launcher that gives up while the job
//! is queued closes the session, and the script cancels the job. The job's `--time` is the
//! last backstop.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::settings::SlurmSettings;
use crate::ssh::shell::{run_sh, sh_command};
use crate::ssh::Master;

/// Both scripts pick the relay's python by one rule (`slurm_python.sh`).
const SCRIPT: &str = concat!(include_str!("slurm_python.sh"), include_str!("slurm.sh"));
const KEEPER: &str = include_str!("slurm_keeper.sh");
const COMMANDS_CHECK: &str = concat!(
    include_str!("slurm_python.sh"),
    include_str!("slurm_commands.sh")
);
/// Runs on the login node with the session's frames (one source).
const RELAY: &str = concat!(
    include_str!("../supervisor/frames.py"),
    include_str!("slurm_relay.py")
);
/// The Slurm commands sshpyk runs on the login node.
pub(crate) const COMMANDS: [&str; 4] = ["sbatch", "srun", "squeue", "scancel"];
/// The allocation one kernel start asks for.
#[derive(Debug, Clone)]
pub(crate) struct Allocation {
    pub(crate) job_name: String,
    pub(crate) settings: SlurmSettings,
}

impl Allocation {
    /// Named after the kernel: Jupyter's kernel id, from its connection file
    /// (`kernel-<id>.json`), which a restart keeps.
    pub(crate) fn for_kernel(settings: &SlurmSettings, connection_file: &Path) -> Self {
        Allocation {
            job_name: format!("sshpyk-{}", kernel_id(connection_file)),
            settings: settings.clone(),
        }
    }

    /// The login node's command line: allocate or adopt, then run `command` (a remote command
    /// line for a POSIX sh) as a job step under the relay, which runs in `python` when the
    /// login node has it (else in python3).
    pub(crate) fn command(&self, command: &str, python: &str) -> String {
        let grace = self.settings.grace.ceil().max(1.0) as u64;
        let keeper = KEEPER.replace("@GRACE@", &grace.to_string());
        sh_command(
            SCRIPT,
            &[
                &self.job_name,
                &self.settings.options,
                &keeper,
                RELAY,
                python,
                command,
            ],
        )
    }
}

fn kernel_id(connection_file: &Path) -> String {
    let stem = connection_file
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy();
    let id = stem.strip_prefix("kernel-").unwrap_or(&stem);
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "kernel".into()
    } else {
        clean
    }
}

/// A line `slurm.sh` printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlurmEvent {
    Submitted {
        job: String,
    },
    Adopted {
        job: String,
    },
    Pending {
        job: String,
        reason: String,
    },
    Waiting,
    Running {
        job: String,
        node: String,
    },
    Refused {
        message: String,
    },
    /// Slurm's commands not on the login node's PATH.
    Missing {
        commands: String,
    },
    Ended {
        job: String,
        state: String,
    },
    /// The relay started the step: where a new session reaches it.
    Relay(Relay),
}

impl SlurmEvent {
    pub(crate) fn parse(line: &str) -> Option<SlurmEvent> {
        let rest = line.strip_prefix("sshpyk-slurm ")?;
        let mut words = rest.splitn(3, ' ');
        let kind = words.next()?;
        let job = words.next().unwrap_or_default().to_string();
        let more = words.next().unwrap_or_default().trim().to_string();
        Some(match kind {
            "submitted" => SlurmEvent::Submitted { job },
            "adopted" => SlurmEvent::Adopted { job },
            "pending" => SlurmEvent::Pending { job, reason: more },
            "waiting" => SlurmEvent::Waiting,
            "running" => SlurmEvent::Running { job, node: more },
            "refused" => SlurmEvent::Refused {
                message: rest["refused".len()..]
                    .trim()
                    .trim_end_matches('|')
                    .replace('|', "; "),
            },
            "ended" => SlurmEvent::Ended { job, state: more },
            "relay" => SlurmEvent::Relay(Relay {
                socket: job,
                python: more,
            }),
            "missing" => SlurmEvent::Missing {
                commands: rest["missing".len()..].trim().replace(' ', ", "),
            },
            _ => return None,
        })
    }
}

/// The relay that holds a Slurm kernel's step on the login node: a new session reaches the
/// supervisor through its Unix `socket`, handed over by `python` running `attach.py`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relay {
    pub(crate) socket: String,
    pub(crate) python: String,
}

/// Where a Slurm kernel runs: its job and the node (`sshpyk ps` shows them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placement {
    pub(crate) job_id: String,
    pub(crate) node: String,
}

/// Follows a start's Slurm lines: logs the phases, turns failures into errors, and remembers a
/// job this start submitted (to cancel it if the start fails) and where the job runs.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    pub(crate) submitted: Option<String>,
    pub(crate) placement: Option<Placement>,
    pub(crate) relay: Option<Relay>,
}

impl Watch {
    /// `Err` when the allocation failed.
    pub(crate) fn on(&mut self, event: SlurmEvent, alias: &str) -> Result<()> {
        match event {
            SlurmEvent::Submitted { job } => {
                tracing::info!("slurm job {job} submitted on '{alias}'");
                self.submitted = Some(job);
            }
            SlurmEvent::Adopted { job } => {
                tracing::info!("adopting slurm job {job}, kept from this kernel's last start")
            }
            SlurmEvent::Pending { job, reason } => {
                tracing::info!("slurm job {job} queued ({reason})")
            }
            SlurmEvent::Waiting => {}
            SlurmEvent::Running { job, node } => {
                tracing::info!("slurm job {job} running on node {node}");
                self.placement = Some(Placement { job_id: job, node });
            }
            SlurmEvent::Relay(point) => self.relay = Some(point),
            SlurmEvent::Refused { message } => {
                return Err(Error::Remote(format!(
                    "slurm on '{alias}' refused the job: {message}; fix --slurm with `sshpyk edit`"
                )))
            }
            SlurmEvent::Missing { commands } => {
                return Err(Error::Remote(format!(
                    "{commands} not found on the login node '{alias}'; see `sshpyk list` for the fix"
                )))
            }
            SlurmEvent::Ended { job, state } => {
                return Err(Error::Remote(format!(
                    "slurm job {job} on '{alias}' ended before the kernel started ({}); see `sacct -j {job}` there",
                    if state.is_empty() { "gone" } else { &state }
                )))
            }
        }
        Ok(())
    }
}

/// Cancels `job` (a start failed after submitting it); best effort, bounded.
pub(crate) async fn cancel(master: &Master, job: &str) {
    let args = [job];
    let cancel = run_sh(master, r#"scancel "$1""#, &args);
    match tokio::time::timeout(std::time::Duration::from_secs(5), cancel).await {
        Ok(Ok(out)) if out.success() => tracing::info!("cancelled slurm job {job}"),
        _ => tracing::warn!(
            "could not cancel slurm job {job}; its batch script ends it after the grace"
        ),
    }
}

/// Each of [`COMMANDS`] and where the login node has it (`None`: not on the PATH that a
/// kernel's start has there).
pub(crate) type LoginNodeCommands = Vec<(&'static str, Option<String>)>;

/// What the starts of Slurm kernels need on the login node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoginNode {
    pub(crate) commands: LoginNodeCommands,
    /// Each kernel python asked about, and the python that would run its relay there (`None`:
    /// neither it nor python3 is there).
    pub(crate) relay_pythons: Vec<(String, Option<String>)>,
}

/// Looks for [`COMMANDS`] and the relay's python for each of `pythons` (kernels' remote
/// pythons) on the login node, in a session like the one that starts kernels.
pub(crate) async fn login_node(master: &Master, pythons: &[String]) -> Result<LoginNode> {
    let mut args: Vec<&str> = COMMANDS.to_vec();
    args.push("--");
    args.extend(pythons.iter().map(String::as_str));
    let out = run_sh(master, COMMANDS_CHECK, &args).await?;
    parse_login_node(&String::from_utf8_lossy(&out.stdout), pythons).ok_or_else(|| {
        Error::Remote(format!(
            "the check for Slurm's commands did not run on '{}': {}",
            master.alias(),
            crate::ssh::config::last_message(&String::from_utf8_lossy(&out.stderr))
        ))
    })
}

/// `None` unless every command and every python has its line.
fn parse_login_node(out: &str, pythons: &[String]) -> Option<LoginNode> {
    let relay_pythons: Vec<Option<String>> = out
        .lines()
        .filter_map(|line| line.strip_prefix("sshpyk-slurm-relay-python"))
        .map(|rest| rest.strip_prefix(' ').map(String::from))
        .collect();
    if relay_pythons.len() != pythons.len() {
        return None;
    }
    Some(LoginNode {
        commands: parse_commands(out)?,
        relay_pythons: pythons.iter().cloned().zip(relay_pythons).collect(),
    })
}

/// `None` unless every command has its line.
fn parse_commands(out: &str) -> Option<LoginNodeCommands> {
    let lines: Vec<Vec<&str>> = out
        .lines()
        .filter_map(|line| line.strip_prefix("sshpyk-slurm-command "))
        .map(|rest| rest.splitn(2, ' ').collect())
        .collect();
    COMMANDS
        .iter()
        .map(|&name| {
            let words = lines.iter().find(|words| words[0] == name)?;
            Some((name, words.get(1).map(|path| path.to_string())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_named_after_jupyters_kernel_id() {
        let a = Allocation::for_kernel(
            &SlurmSettings {
                options: String::new(),
                grace: 60.0,
            },
            Path::new("/run/jupyter/kernel-1f2e-3d.json"),
        );
        assert_eq!(a.job_name, "sshpyk-1f2e-3d");
        assert_eq!(kernel_id(Path::new("/x/we ird$.json")), "weird");
    }

    #[test]
    fn script_lines_parse_into_events() {
        assert_eq!(
            SlurmEvent::parse("sshpyk-slurm pending 12 Resources"),
            Some(SlurmEvent::Pending {
                job: "12".into(),
                reason: "Resources".into()
            })
        );
        assert_eq!(
            SlurmEvent::parse("sshpyk-slurm running 12 node-1"),
            Some(SlurmEvent::Running {
                job: "12".into(),
                node: "node-1".into()
            })
        );
        assert_eq!(
            SlurmEvent::parse(
                "sshpyk-slurm refused invalid partition specified: x|Batch job submission failed|"
            ),
            Some(SlurmEvent::Refused {
                message: "invalid partition specified: x; Batch job submission failed".into()
            })
        );
        assert_eq!(
            SlurmEvent::parse("sshpyk-slurm missing squeue scancel"),
            Some(SlurmEvent::Missing {
                commands: "squeue, scancel".into()
            })
        );
        assert_eq!(
            SlurmEvent::parse("sshpyk-slurm relay /tmp/sshpyk-relay-x/relay.sock /opt/my python3"),
            Some(SlurmEvent::Relay(Relay {
                socket: "/tmp/sshpyk-relay-x/relay.sock".into(),
                python: "/opt/my python3".into()
            }))
        );
        assert_eq!(SlurmEvent::parse("banner"), None);
    }

    /// The check script run by a real sh, on a PATH with only some of the commands.
    fn check_on_path(bin: &Path, pythons: &[String]) -> LoginNode {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(COMMANDS_CHECK)
            .arg("sh")
            .args(COMMANDS)
            .arg("--")
            .args(pythons)
            .env("PATH", bin)
            .output()
            .unwrap();
        parse_login_node(&String::from_utf8_lossy(&out.stdout), pythons).unwrap()
    }

    #[test]
    fn the_commands_check_finds_what_is_on_the_path_and_names_what_is_not() {
        let bin = tempfile::tempdir().unwrap();
        for name in ["srun", "scancel"] {
            std::os::unix::fs::symlink("/bin/true", bin.path().join(name)).unwrap();
        }
        let pythons = [
            "/bin/true".to_string(),
            "python3".into(),
            "/no/python".into(),
        ];
        let found = check_on_path(bin.path(), &pythons);
        let at = |name: &str| Some(bin.path().join(name).display().to_string());
        assert_eq!(
            found.commands,
            [
                ("sbatch", None),
                ("srun", at("srun")),
                ("squeue", None),
                ("scancel", at("scancel"))
            ]
        );
        // The relay runs in the kernel's python when there, else in python3: none here.
        assert_eq!(
            found.relay_pythons,
            [
                (pythons[0].clone(), Some("/bin/true".into())),
                (pythons[1].clone(), None),
                (pythons[2].clone(), None)
            ]
        );
        std::os::unix::fs::symlink("/bin/true", bin.path().join("python3")).unwrap();
        let found = check_on_path(bin.path(), &pythons);
        assert_eq!(
            found.relay_pythons[1..],
            [
                (pythons[1].clone(), at("python3")),
                (pythons[2].clone(), at("python3"))
            ]
        );
        assert_eq!(parse_commands("sshpyk-slurm-command sbatch /x\n"), None);
    }
}
