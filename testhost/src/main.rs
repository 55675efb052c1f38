//! `sshpyk-testhost`: starts a throwaway remote host for the demo and benchmark scripts, prints
//! one JSON line describing it, and tears it down when stdin reaches EOF or on SIGTERM, SIGINT
//! or SIGHUP.

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::getpid;
use sshpyk_testhost::{Mode, RemoteHost};

const USAGE: &str = "usage: sshpyk-testhost [--mode auto|loopback|netns] [--alias NAME] \
                     [--control-master] [--ignore-stdin] [--sshd-option LINE]... \
                     [--rtt-ms N] [--rate BYTES_PER_SEC]

Starts a throwaway OpenSSH host and prints one JSON line:
  {\"alias\":..,\"ssh_config\":..,\"address\":..,\"port\":..,\"netns\":..|null,\"dir\":..,
   \"rtt_ms\":..,\"proxy_port\":..|null,\"link_down\":[argv]|null,\"link_up\":[argv]|null}
then runs until stdin reaches EOF (unless --ignore-stdin) or SIGTERM/SIGINT/SIGHUP arrives,
and cleans up.

--rtt-ms and --rate put a delay proxy in this process between the client configuration and
sshd (address and port stay sshd's own; proxy_port is the proxy's on 127.0.0.1). link_down and
link_up are the commands that cut and restore the host's link (netns mode, as root).";

struct Args {
    mode: Mode,
    alias: String,
    control_master: bool,
    ignore_stdin: bool,
    sshd_options: Vec<String>,
    rtt_ms: u64,
    rate: Option<u64>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        mode: Mode::Auto,
        alias: "testhost".to_string(),
        control_master: false,
        ignore_stdin: false,
        sshd_options: Vec::new(),
        rtt_ms: 0,
        rate: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--mode" => args.mode = argv.next().context("--mode needs a value")?.parse()?,
            "--alias" => args.alias = argv.next().context("--alias needs a value")?,
            "--control-master" => args.control_master = true,
            "--ignore-stdin" => args.ignore_stdin = true,
            "--sshd-option" => args
                .sshd_options
                .push(argv.next().context("--sshd-option needs a value")?),
            "--rtt-ms" => {
                args.rtt_ms = argv
                    .next()
                    .context("--rtt-ms needs a value")?
                    .parse()
                    .context("--rtt-ms needs a whole number of milliseconds")?;
            }
            "--rate" => {
                let rate = argv.next().context("--rate needs a value")?;
                args.rate = Some(rate.parse().context("--rate needs bytes per second")?);
            }
            "-h" | "--help" => return Ok(None),
            _ => bail!("unexpected argument {arg:?}\n{USAGE}"),
        }
    }
    Ok(Some(args))
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    // Blocked before any thread exists, so every thread inherits the mask and the signals wait
    // for `wait()` below (Command resets the mask for sshd).
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking signals")?;

    let mut builder = RemoteHost::builder()
        .mode(args.mode)
        .alias(&args.alias)
        .control_master(args.control_master)
        .extra_sshd_config(&args.sshd_options.join("\n"))
        .rtt(Duration::from_millis(args.rtt_ms));
    if let Some(rate) = args.rate {
        builder = builder.rate(rate);
    }
    let host = builder.start()?;
    let line = serde_json::json!({
        "alias": host.alias(),
        "ssh_config": host.ssh_config(),
        "address": host.address(),
        "port": host.port(),
        "netns": host.netns(),
        "dir": host.dir(),
        "rtt_ms": args.rtt_ms,
        "proxy_port": host.proxy_port(),
        "link_down": host.link_command(false).ok(),
        "link_up": host.link_command(true).ok(),
    });
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;

    if !args.ignore_stdin {
        thread::spawn(|| {
            // EOF or a read error both mean whoever started us is gone.
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            let _ = kill(getpid(), Signal::SIGTERM);
        });
    }
    signals.wait().context("waiting for a signal")?;
    host.stop()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshpyk-testhost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
