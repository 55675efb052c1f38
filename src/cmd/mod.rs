//! One file per subcommand; `run` dispatches and returns the process exit status.

mod add;
mod connect;
mod delete;
mod docs;
mod edit;
mod environment;
mod host;
mod list;
mod logs;
mod mount;
mod mounts;
mod ps;
pub(crate) mod settings;

use crate::cli::{Cli, Command};
use crate::error::Result;
use crate::jupyter::kernelspec::Kernelspec;
use crate::launcher::{self, LaunchOptions};
use crate::logs::LogLevel;

/// Sets up logging: `-v`'s level, or for `launch` the kernelspec's (whichever says more), with
/// the kernel's prefix on stderr and its own log file.
pub fn init_logging(cli: &Cli) {
    let asked = LogLevel::from_verbose(cli.verbose);
    let Command::Launch(args) = &cli.command else {
        crate::logs::init(asked, None);
        return;
    };
    let stored = Kernelspec::read(&args.kernelspec)
        .ok()
        .and_then(|k| k.spec.settings()?.ok()?.log_level);
    let level = asked.max(stored.unwrap_or(LogLevel::Info));
    crate::logs::init(level, Some(&crate::logs::kernel_name(&args.kernelspec)));
}

pub async fn run(cli: Cli) -> Result<i32> {
    // Where the user manages kernels: not on Jupyter's stderr at every start, nor into a script.
    if matches!(
        cli.command,
        Command::Add(_) | Command::Edit(_) | Command::Delete(_) | Command::List(_)
    ) {
        crate::python_sshpyk::coexistence::notice_python_sshpyk();
    }
    match cli.command {
        Command::Add(args) => add::run(args).await.map(|()| 0),
        Command::Edit(args) => edit::run(args).await.map(|()| 0),
        Command::Delete(args) => delete::run(args).map(|()| 0),
        Command::List(args) => list::run(args).await.map(|()| 0),
        Command::Mount(args) => mount::run(args, cli.verbose >= 3).await,
        Command::Logs(args) => logs::run(args).await.map(|()| 0),
        Command::Completions(args) => docs::completions(args.shell).map(|()| 0),
        Command::Man => docs::man().map(|()| 0),
        Command::Connect(args) => connect::run(args, cli.verbose >= 3).await.map(|()| 0),
        Command::Mounts(command) => mounts::run(command).await.map(|()| 0),
        Command::Ps(args) => ps::run(args).await.map(|()| 0),
        Command::Launch(args) => {
            launcher::run(LaunchOptions {
                kernelspec_dir: args.kernelspec,
                connection_file: args.connection_file,
                ssh_verbose: cli.verbose >= 3,
            })
            .await
        }
    }
}
