use clap::Parser;
use sshpyk::cli::Cli;

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // One thread: children get PR_SET_PDEATHSIG from the thread that forks them, which must
    // live as long as the process (see local_mount::sshfs).
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

/// Logs go to stderr: info by default (one line per launch phase), more with -v/-vv.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .init();
}
