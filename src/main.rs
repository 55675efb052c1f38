use clap::Parser;
use sshpyk::cli::Cli;

fn main() {
    let cli = Cli::parse();
    sshpyk::cmd::init_logging(&cli);
    // One thread: children get PR_SET_PDEATHSIG from the thread that forks them, which must
    // live as long as the process (see remote_on_local::sshfs).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(sshpyk::cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sshpyk: error: {e}");
            e.exit_code()
        }
    };
    drop(runtime);
    std::process::exit(code);
}
