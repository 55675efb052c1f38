//! Command-line interface (clap). Flag names follow the original sshpyk documentation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sshpyk",
    version,
    about = "Run Jupyter kernels on remote machines over OpenSSH, as if they were local"
)]
pub struct Cli {
    /// More output on stderr: -v debug, -vv trace, -vvv trace plus ssh's own debug output.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a kernelspec that runs a remote kernel through an ssh host alias.
    Add(AddArgs),
    /// Change settings of an sshpyk kernelspec; the rest is kept.
    Edit(EditArgs),
    /// Remove kernelspecs written by sshpyk.
    Delete(DeleteArgs),
    /// List the kernels Jupyter sees and check the sshpyk ones.
    List(ListArgs),
    /// Start a remote kernel (what kernel.json runs; Jupyter passes the connection file).
    Launch(LaunchArgs),
    /// Add, list and remove a kernel's mounts (cloud storage on the remote, local dirs), also
    /// on running kernels.
    #[command(subcommand)]
    Mounts(MountsCommand),
    /// List running kernels: kernelspec, host, remote pid, uptime, state, mounts.
    Ps(PsArgs),
}

#[derive(Debug, Subcommand)]
pub enum MountsCommand {
    /// Mount cloud storage on the remote for the kernel's life (read-only unless --rw); running
    /// kernels of that kernelspec get it at once.
    Add(MountsAddArgs),
    /// Every mount of every kind, with its state (live for running kernels).
    List(MountsListArgs),
    /// Remove the mounts (any kind) at a remote path, from the kernelspec and running kernels.
    Remove(MountsRemoveArgs),
}

#[derive(Debug, Args)]
pub struct MountsAddArgs {
    /// The sshpyk kernelspec.
    #[arg(long)]
    pub kernel_name: String,
    /// The storage backend (or --rclone-config for any other).
    #[arg(
        long,
        value_enum,
        required_unless_present = "rclone_config",
        conflicts_with = "rclone_config"
    )]
    pub backend: Option<crate::cloud::Backend>,
    /// A non-secret rclone config field of the backend (repeatable).
    #[arg(
        long = "set",
        value_name = "KEY=VALUE",
        conflicts_with = "rclone_config"
    )]
    pub settings: Vec<String>,
    /// Secrets: a JSON object of config fields, from FILE or `-` (stdin).
    #[arg(long, value_name = "FILE|-", conflicts_with = "rclone_config")]
    pub creds: Option<String>,
    /// A raw rclone config (any backend); --source names its section: REMOTE:PATH.
    #[arg(long, value_name = "FILE")]
    pub rclone_config: Option<PathBuf>,
    /// The path inside the backend (bucket/prefix), or REMOTE:PATH with --rclone-config.
    #[arg(long, default_value = "")]
    pub source: String,
    /// Mount read-write (default: read-only).
    #[arg(long)]
    pub rw: bool,
    /// An extra `rclone mount` flag, e.g. --rclone-flag=--dir-cache-time=10s (repeatable).
    #[arg(long = "rclone-flag", value_name = "FLAG", allow_hyphen_values = true)]
    pub rclone_flags: Vec<String>,
    /// The mount point on the remote (absolute).
    pub remote_path: String,
}

#[derive(Debug, Args)]
pub struct MountsListArgs {
    /// Only this kernelspec.
    #[arg(long)]
    pub kernel_name: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MountsRemoveArgs {
    /// The sshpyk kernelspec.
    #[arg(long)]
    pub kernel_name: String,
    /// The mount point on the remote.
    pub remote_path: String,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Settings shared by `add` and `edit`; every one is optional so that `edit` changes only what
/// is given.
#[derive(Debug, Args, Default, Clone)]
pub struct SpecArgs {
    /// Host alias declared in the ssh config file.
    #[arg(long)]
    pub ssh_host_alias: Option<String>,
    /// Kernelspec name on the remote host (see `jupyter kernelspec list` there).
    #[arg(long)]
    pub remote_kernel_name: Option<String>,
    /// Remote environment whose bin/python has jupyter_client (absolute, or ~/ for the remote home).
    #[arg(long, conflicts_with = "remote_python")]
    pub remote_python_prefix: Option<String>,
    /// Remote python interpreter itself (alternative to --remote-python-prefix).
    #[arg(long)]
    pub remote_python: Option<String>,
    /// Name shown in Jupyter's kernel picker [default: derived from the remote kernel].
    #[arg(long)]
    pub display_name: Option<String>,
    /// Kernel language [default: the remote kernelspec's].
    #[arg(long)]
    pub language: Option<String>,
    /// ssh config file that declares the alias [default: ~/.ssh/config].
    #[arg(long)]
    pub ssh_config: Option<PathBuf>,
    /// ssh client to run [default: ssh on PATH].
    #[arg(long)]
    pub ssh: Option<String>,
    /// Seconds the whole start may take [default: 30].
    #[arg(long, value_parser = positive_seconds)]
    pub launch_timeout: Option<f64>,
    /// Seconds the launcher's own graceful stop (its parent, JPY_PARENT_PID, is gone) waits for
    /// the kernel before ending it; SIGTERM from Jupyter ends the kernel at once [default: 30].
    #[arg(long, value_parser = positive_seconds)]
    pub shutdown_timeout: Option<f64>,
    /// Seconds a remote kernel waits for its launcher to come back after the connection is lost
    /// (a network drop); a launcher killed while its connection lives ends the kernel at once
    /// [default: 300].
    #[arg(long, value_parser = positive_seconds)]
    pub orphan_timeout: Option<f64>,
    /// Mount a local directory on the remote for the kernel's lifetime:
    /// "/local/path:/remote/path[:sshfs_options]" (write ':' in a path as '\:'). Repeatable.
    #[arg(long, value_name = "SPEC")]
    pub mount_local_on_remote: Vec<String>,
    /// sshfs on the remote [default: sshfs on the remote PATH].
    #[arg(long)]
    pub remote_sshfs: Option<String>,
    /// Alias in the remote's own ssh config that reaches this machine (instead of sshpyk's ephemeral key).
    #[arg(long)]
    pub ssh_host_alias_local_on_remote: Option<String>,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    let (min, max) = crate::kernelspec::TIMEOUT_RANGE;
    match text.parse::<f64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{text}' is not a number of seconds from {min} to {max}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Kernelspec name [default: ssh_<alias>_<remote kernel>].
    #[arg(long)]
    pub kernel_name: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Overwrite an existing kernelspec of the same name.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The sshpyk kernelspec to change.
    #[arg(long)]
    pub kernel_name: String,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Remove every mount (local dirs and cloud storage) before adding the given ones.
    #[arg(long)]
    pub clear_mounts: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kernelspec names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Also delete kernelspecs that sshpyk did not write.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sshpyk (remote) kernels.
    #[arg(short, long)]
    pub remote: bool,
    /// Only local kernels.
    #[arg(short, long)]
    pub local: bool,
    /// Do not check the sshpyk kernels.
    #[arg(short = 'n', long)]
    pub no_check: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Directory of the sshpyk kernelspec (kernel.json) to start.
    #[arg(long)]
    pub kernelspec: PathBuf,
    /// The connection file written by Jupyter.
    pub connection_file: PathBuf,
}
