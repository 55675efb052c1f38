//! Command-line interface (clap). Flag names follow the original sshpyk documentation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sshpyk",
    version = env!("SSHPYK_VERSION"),
    about = "Run Jupyter kernels on remote machines over OpenSSH, as if they were local",
    long_about = "Run Jupyter kernels on remote machines over OpenSSH, as if they were local.\n\n\
                  `sshpyk add` writes a kernelspec whose kernel.json runs `sshpyk launch`: \
                  Jupyter (JupyterLab, Notebook, VS Code, jupyter console, nbclient) starts it as \
                  a local kernel, and it reaches the host with your own ssh client and ssh \
                  config, starts the real kernel there and carries its five ZMQ channels; \
                  interrupt, restart and shutdown work as with a local kernel, and nothing is \
                  left behind on either side. `sshpyk list` checks every kernel, `sshpyk ps` \
                  shows the running ones, `sshpyk logs` a launcher's log."
)]
pub struct Cli {
    /// More output on stderr: -v debug, -vv trace, -vvv trace plus ssh's own debug output.
    // Listed after every subcommand's own flags, not among them.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 1000)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Add a kernelspec that runs a remote kernel through an ssh host alias.
    #[command(
        override_usage = "sshpyk add --ssh-host-alias <ALIAS> --remote-kernel-name <NAME> \
                          (--remote-python-prefix <DIR> | --remote-python <PATH>) [OPTIONS]",
        mut_arg("ssh_host_alias", |a| append_help(a, " [required]")),
        mut_arg("remote_kernel_name", |a| append_help(a, " [required]")),
        mut_arg("remote_python_prefix", |a| append_help(a, " [required: this or --remote-python]")),
        mut_arg("remote_python", |a| append_help(a, " [required: this or --remote-python-prefix]")),
    )]
    Add(AddArgs),
    /// Change settings of an sshpyk kernelspec; the rest is kept.
    #[command(
        mut_arg("remote_cwd", |a| append_help(a, "; \"\" resets it")),
        mut_arg("remote_init", |a| append_help(a, "; \"\" removes it")),
        mut_arg("slurm", |a| append_help(a, "; \"\" turns it off")),
    )]
    Edit(EditArgs),
    /// Remove kernelspecs written by sshpyk.
    Delete(DeleteArgs),
    /// List the kernels Jupyter sees and check the sshpyk ones.
    List(ListArgs),
    /// Start a remote kernel (what kernel.json runs; Jupyter passes the connection file).
    Launch(LaunchArgs),
    /// Mount a remote directory here with sshfs, for as long as a subshell (or the foreground
    /// command) runs.
    #[command(after_help = crate::mounts::remote_on_local::OPTIONS_HELP)]
    Mount(MountArgs),
    /// Show the log of a kernel's latest launcher run.
    Logs(LogsArgs),
    /// Print a shell completion script (bash, elvish, fish, powershell, zsh) on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout: `sshpyk man | man -l -`.
    Man,
    /// Open a host's ssh connection interactively (password, OTP, FIDO touch) for kernels and
    /// mounts to ride until ControlPersist ends it.
    Connect(ConnectArgs),
    /// Add, list and remove a kernel's mounts (cloud storage on the remote, local dirs), also
    /// on running kernels.
    #[command(subcommand)]
    Mounts(MountsCommand),
    /// List running kernels: kernelspec, host, remote pid, uptime, state, mounts.
    Ps(PsArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum MountsCommand {
    /// Mount cloud storage on the remote for the kernel's life (read-only unless --rw); running
    /// kernels of that kernelspec get it at once.
    Add(MountsAddArgs),
    /// Every mount of every kind, with its state (live for running kernels).
    List(MountsListArgs),
    /// Remove the mounts (any kind) at a remote path, from the kernelspec and running kernels.
    Remove(MountsRemoveArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MountsAddArgs {
    /// The sshpyk kernelspec.
    #[arg(long)]
    pub(crate) kernel_name: String,
    /// The storage backend (or --rclone-config for any other).
    #[arg(
        long,
        value_enum,
        required_unless_present = "rclone_config",
        conflicts_with = "rclone_config"
    )]
    pub(crate) backend: Option<crate::mounts::cloud_on_remote::Backend>,
    /// A non-secret rclone config field of the backend (repeatable).
    #[arg(
        long = "set",
        value_name = "KEY=VALUE",
        conflicts_with = "rclone_config"
    )]
    pub(crate) settings: Vec<String>,
    /// Secrets: a JSON object of config fields, from FILE or `-` (stdin).
    #[arg(long, value_name = "FILE|-", conflicts_with = "rclone_config")]
    pub(crate) creds: Option<String>,
    /// A raw rclone config (any backend); --source names its section: REMOTE:PATH.
    #[arg(long, value_name = "FILE")]
    pub(crate) rclone_config: Option<PathBuf>,
    /// The path inside the backend (bucket/prefix), or REMOTE:PATH with --rclone-config.
    #[arg(long, default_value = "")]
    pub(crate) source: String,
    /// Mount read-write (default: read-only).
    #[arg(long)]
    pub(crate) rw: bool,
    /// An extra `rclone mount` flag, e.g. --rclone-flag=--dir-cache-time=10s (repeatable).
    #[arg(long = "rclone-flag", value_name = "FLAG", allow_hyphen_values = true)]
    pub(crate) rclone_flags: Vec<String>,
    /// The mount point on the remote (absolute).
    pub(crate) remote_path: String,
}

#[derive(Debug, Args)]
pub(crate) struct MountsListArgs {
    /// Only this kernelspec.
    #[arg(long)]
    pub(crate) kernel_name: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MountsRemoveArgs {
    /// The sshpyk kernelspec.
    #[arg(long)]
    pub(crate) kernel_name: String,
    /// The mount point on the remote.
    pub(crate) remote_path: String,
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Settings shared by `add` and `edit`; every one is optional so that `edit` changes only what
/// is given.
#[derive(Debug, Args, Default, Clone, PartialEq)]
pub(crate) struct SpecArgs {
    /// Host alias declared in the ssh config file.
    #[arg(long)]
    pub(crate) ssh_host_alias: Option<String>,
    /// Kernelspec name on the remote host (see `jupyter kernelspec list` there).
    #[arg(long)]
    pub(crate) remote_kernel_name: Option<String>,
    /// Remote environment whose bin/python has jupyter_client (absolute, or ~/ for the remote home).
    #[arg(long, conflicts_with = "remote_python")]
    pub(crate) remote_python_prefix: Option<String>,
    /// Remote python interpreter itself (alternative to --remote-python-prefix): absolute, ~/,
    /// or a command name looked up on the remote PATH after --remote-init.
    #[arg(long)]
    pub(crate) remote_python: Option<String>,
    /// Name shown in Jupyter's kernel picker [default: derived from the remote kernel].
    #[arg(long)]
    pub(crate) display_name: Option<String>,
    /// Kernel language [default: the remote kernelspec's].
    #[arg(long)]
    pub(crate) language: Option<String>,
    /// ssh config file that declares the alias [default: ~/.ssh/config].
    #[arg(long)]
    pub(crate) ssh_config: Option<PathBuf>,
    /// ssh client to run [default: ssh on PATH].
    #[arg(long)]
    pub(crate) ssh: Option<String>,
    /// Seconds the whole start may take [default: 30].
    #[arg(long, value_parser = positive_seconds)]
    pub(crate) launch_timeout: Option<f64>,
    /// Seconds the launcher's own graceful stop (its parent, JPY_PARENT_PID, is gone) waits for
    /// the kernel before ending it; SIGTERM from Jupyter ends the kernel at once [default: 30].
    #[arg(long, value_parser = positive_seconds)]
    pub(crate) shutdown_timeout: Option<f64>,
    /// Seconds a remote kernel waits for its launcher to come back after the connection is lost
    /// (a network drop, a closed laptop); a launcher killed while its connection lives ends the
    /// kernel at once. Shorten it on shared GPU hosts [default: 10800, 3 h].
    #[arg(long, value_parser = positive_seconds)]
    pub(crate) orphan_timeout: Option<f64>,
    /// Mount a local directory on the remote for the kernel's lifetime:
    /// "/local/path:/remote/path[:sshfs_options]" (write ':' in a path as '\:'). Repeatable.
    #[arg(long, value_name = "SPEC")]
    pub(crate) mount_local_on_remote: Vec<String>,
    /// sshfs on the remote [default: sshfs on the remote PATH].
    #[arg(long)]
    pub(crate) remote_sshfs: Option<String>,
    /// Mounts: the remote's sshfs connects back to this machine with this alias of the remote's
    /// own ssh config, instead of over the kernel's connection (compatibility; not confined).
    #[arg(long)]
    pub(crate) ssh_host_alias_local_on_remote: Option<String>,
    /// How much the launcher logs (on Jupyter's stderr and in `sshpyk logs`) [default: info].
    #[arg(long, value_enum)]
    pub(crate) log_level: Option<crate::logs::LogLevel>,
    /// A variable for the remote kernel, KEY=VALUE, taken literally (no expansion); set after
    /// --remote-init, so it wins. Stored in kernel.json: not for secrets. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub(crate) remote_env: Vec<String>,
    /// The remote kernel's working directory (absolute, or ~/...) [default: the remote home].
    #[arg(long, value_name = "DIR")]
    pub(crate) remote_cwd: Option<String>,
    /// Shell code run in a login shell of the remote user's shell before the kernel starts
    /// (`module load cuda/12`, `conda activate ml`).
    #[arg(long, value_name = "SNIPPET")]
    pub(crate) remote_init: Option<String>,
    /// Run the kernel on a Slurm compute node: sbatch options for its allocation, split on
    /// blanks ("--partition gpu --gres gpu:1 --time 04:00:00"); the alias is the login node.
    #[arg(long, value_name = "OPTIONS", allow_hyphen_values = true)]
    pub(crate) slurm: Option<String>,
    /// Seconds the Slurm allocation outlives its kernel, for a restart to reuse it [default: 60].
    #[arg(long, value_parser = positive_seconds)]
    pub(crate) slurm_grace: Option<f64>,
}

/// `add` and `edit` share the flags of [`SpecArgs`]; each says in the help what is its own.
fn append_help(arg: clap::Arg, text: &str) -> clap::Arg {
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    arg.help(format!("{help}{text}"))
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    let (min, max) = crate::settings::TIMEOUT_RANGE;
    match text.parse::<f64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{text}' is not a number of seconds from {min} to {max}"
        )),
    }
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// Kernelspec name [default: ssh_<alias>_<remote kernel>].
    #[arg(long)]
    pub(crate) kernel_name: Option<String>,
    #[command(flatten)]
    pub(crate) spec: SpecArgs,
    /// Overwrite an existing kernelspec of the same name.
    #[arg(long)]
    pub(crate) replace: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EditArgs {
    /// The sshpyk kernelspec to change.
    #[arg(long)]
    pub(crate) kernel_name: String,
    #[command(flatten)]
    pub(crate) spec: SpecArgs,
    /// Remove every mount (local dirs and cloud storage) before adding the given ones.
    #[arg(long)]
    pub(crate) clear_mounts: bool,
    /// Convert a kernelspec written by the Python sshpyk into an sshpyk one, keeping its alias,
    /// remote python, remote kernel and display name.
    #[arg(long)]
    pub(crate) adopt: bool,
    /// Remove every --remote-env before adding the given ones.
    #[arg(long)]
    pub(crate) clear_remote_env: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Kernelspec names.
    #[arg(required = true)]
    pub(crate) names: Vec<String>,
    /// Also delete kernelspecs that sshpyk did not write.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only sshpyk (remote) kernels.
    #[arg(short, long)]
    pub(crate) remote: bool,
    /// Only local kernels.
    #[arg(short, long)]
    pub(crate) local: bool,
    /// Do not check the sshpyk kernels.
    #[arg(short = 'n', long)]
    pub(crate) no_check: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LaunchArgs {
    /// Directory of the sshpyk kernelspec (kernel.json) to start.
    #[arg(long)]
    pub(crate) kernelspec: PathBuf,
    /// The connection file written by Jupyter.
    pub(crate) connection_file: PathBuf,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("host").args(["ssh_host_alias", "kernel_name"]))]
pub(crate) struct MountArgs {
    /// Host alias declared in the ssh config file.
    #[arg(long, conflicts_with = "umount")]
    pub(crate) ssh_host_alias: Option<String>,
    /// Take the alias, ssh config and ssh client of this sshpyk kernelspec.
    #[arg(long, conflicts_with = "umount")]
    pub(crate) kernel_name: Option<String>,
    /// ssh config file that declares the alias [default: ~/.ssh/config].
    #[arg(long, conflicts_with_all = ["umount", "kernel_name"])]
    pub(crate) ssh_config: Option<PathBuf>,
    /// Remote directory to mount [default: the remote home directory].
    #[arg(short, long, conflicts_with = "umount")]
    pub(crate) remote_path: Option<String>,
    /// No subshell: keep the mount until Ctrl+C or SIGTERM.
    #[arg(long, conflicts_with = "umount")]
    pub(crate) foreground: bool,
    /// sshfs opens its own ssh connection instead of riding the alias's ControlMaster (it may
    /// then prompt on the terminal).
    #[arg(long, conflicts_with = "umount")]
    pub(crate) direct: bool,
    /// An sshfs or ssh option, given to sshfs as `-o OPTION`; wins over sshpyk's defaults.
    /// Repeatable.
    #[arg(short = 'o', value_name = "OPTION", conflicts_with = "umount")]
    pub(crate) options: Vec<String>,
    /// Remove a mount left behind (a killed sshpyk, a dead connection).
    #[arg(long)]
    pub(crate) umount: bool,
    /// With --umount: detach a busy mount now; it goes away when its last user lets go.
    #[arg(long, requires = "umount")]
    pub(crate) lazy: bool,
    /// Local directory to mount on (created when missing, and then removed afterwards).
    pub(crate) mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The kernel's name (its kernelspec's).
    pub(crate) name: String,
    /// Keep printing what the run logs, as it logs it (Ctrl-C to stop).
    #[arg(short, long, conflicts_with = "all")]
    pub(crate) follow: bool,
    /// List every run of the kernel that has a log, oldest first.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Host alias declared in the ssh config file.
    #[arg(
        required_unless_present = "kernel_name",
        conflicts_with = "kernel_name"
    )]
    pub(crate) alias: Option<String>,
    /// The host of this sshpyk kernelspec (its alias, ssh config and ssh client).
    #[arg(long, conflicts_with_all = ["ssh_config", "ssh"])]
    pub(crate) kernel_name: Option<String>,
    /// ssh config file that declares the alias [default: ~/.ssh/config].
    #[arg(long)]
    pub(crate) ssh_config: Option<PathBuf>,
    /// ssh client to run [default: ssh on PATH].
    #[arg(long)]
    pub(crate) ssh: Option<String>,
    /// Only say whether a connection is open (exit 0) or not (exit 4).
    #[arg(long, conflicts_with = "exit")]
    pub(crate) check: bool,
    /// Close the connection.
    #[arg(long)]
    pub(crate) exit: bool,
}
