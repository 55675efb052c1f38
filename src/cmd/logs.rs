//! `sshpyk logs NAME [-f] [--all]`: the log of a kernel's latest launcher run, followed as it
//! grows, or the list of its runs.

use std::io::{Read, Seek, Write};
use std::time::Duration;

use crate::cli::LogsArgs;
use crate::error::{Error, Result};
use crate::logs::{self, Run};

/// How often `-f` looks for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub(crate) async fn run(args: LogsArgs) -> Result<()> {
    let dir = logs::kernel_dir(&args.name)?;
    let runs = logs::runs(&dir);
    let Some(latest) = runs.last() else {
        return Err(Error::Invalid(format!(
            "no logs for kernel '{}' in {}; a log is written each time Jupyter starts the kernel",
            args.name,
            dir.display()
        )));
    };
    if args.all {
        for run in &runs {
            let size = std::fs::metadata(&run.path).map(|m| m.len()).unwrap_or(0)
                + std::fs::metadata(run.previous())
                    .map(|m| m.len())
                    .unwrap_or(0);
            println!(
                "{}  pid {:<7}  {:>9} bytes  {}{}",
                logs::utc_time(run.started),
                run.pid,
                size,
                run.path.display(),
                if run.is_live() { "  (running)" } else { "" }
            );
        }
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let write_err = Error::io("cannot write the log to stdout");
    if let Ok(older) = std::fs::read(latest.previous()) {
        out.write_all(&older).map_err(write_err)?;
    }
    let mut file = std::fs::File::open(&latest.path)
        .map_err(Error::io(format!("cannot read {}", latest.path.display())))?;
    copy_new(&mut file, &mut out)?;
    if args.follow {
        drop(out);
        follow(latest, file).await?;
    }
    Ok(())
}

/// Prints what the run logs from now on, until its launcher has ended and nothing more came.
async fn follow(run: &Run, mut file: std::fs::File) -> Result<()> {
    loop {
        let live = run.is_live();
        tokio::time::sleep(FOLLOW_POLL).await;
        let mut out = std::io::stdout().lock();
        // Rotated: the rest of the old file went to `.log.1`, the run goes on in a new file.
        let position = file.stream_position().unwrap_or(0);
        let current_len = std::fs::metadata(&run.path).map(|m| m.len()).unwrap_or(0);
        if current_len < position {
            copy_new(&mut file, &mut out)?;
            file = match std::fs::File::open(&run.path) {
                Ok(f) => f,
                Err(_) => return Ok(()),
            };
        }
        copy_new(&mut file, &mut out)?;
        if !live {
            return Ok(());
        }
    }
}

/// Copies what `file` holds past its position, and flushes.
fn copy_new(file: &mut std::fs::File, out: &mut impl Write) -> Result<()> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(Error::io("cannot read the log"))?;
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(Error::io("cannot write the log to stdout"))
}
