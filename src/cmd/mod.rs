//! One file per subcommand; `run` dispatches and returns the process exit status.

mod add;
mod delete;
mod edit;
mod list;
mod mounts;
mod ps;
mod settings;

use crate::cli::{Cli, Command};
use crate::error::Result;
use crate::launcher::{self, LaunchOptions};

pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Add(args) => add::run(args).await.map(|()| 0),
        Command::Edit(args) => edit::run(args).await.map(|()| 0),
        Command::Delete(args) => delete::run(args).map(|()| 0),
        Command::List(args) => list::run(args).await.map(|()| 0),
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
