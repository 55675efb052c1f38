//! Logging: lines on stderr (a launcher's prefixed with `[sshpyk <kernel>]`, since Jupyter mixes
//! them with its own; other commands' as `sshpyk: warning: ...`, like their errors), and for each launcher run a log file of its own,
//! `<runtime dir>/logs/<kernel>/<start>-<pid>.log` (0600 in 0700 directories), which
//! `sshpyk logs` shows. Files are rotated: a run keeps its last `MAX_FILE_BYTES` and the bytes
//! before them in `.log.1`; a kernel keeps its last `KEPT_RUNS` runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::error::{Error, Result};
use crate::utc::UtcTime;

/// One run's log file grows to this, then starts over (the older part kept in `.log.1`).
const MAX_FILE_BYTES: u64 = 8 << 20;
/// Runs of one kernel whose logs are kept.
const KEPT_RUNS: usize = 10;

/// The verbosity stored in a kernelspec (`add/edit --log-level`), as `-v`, `-vv`, `-vvv` give it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevel {
    /// One line per phase (the default).
    Info,
    /// Debug lines too (-v).
    Debug,
    /// Everything (-vv).
    Trace,
    /// Everything plus ssh's own debug output (-vvv).
    Ssh,
}

impl LogLevel {
    /// The level of `-v` given `count` times.
    pub(crate) fn from_verbose(count: u8) -> Self {
        match count {
            0 => LogLevel::Info,
            1 => LogLevel::Debug,
            2 => LogLevel::Trace,
            _ => LogLevel::Ssh,
        }
    }

    fn tracing(self) -> tracing::Level {
        match self {
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace | LogLevel::Ssh => tracing::Level::TRACE,
        }
    }
}

/// Sets up logging for this process at `level`: plain stderr, or for a launcher of kernel
/// `name` the prefixed stderr and the run's log file.
pub(crate) fn init(level: LogLevel, launcher_of: Option<&str>) {
    let Some(name) = launcher_of else {
        init_stderr(level, None, None);
        return;
    };
    match RunLog::create(name) {
        Ok(file) => init_stderr(level, Some(name), Some(file)),
        Err(e) => {
            init_stderr(level, Some(name), None);
            tracing::warn!("no log file for this run: {e}");
        }
    }
}

/// The kernel's name: its kernelspec directory's.
pub(crate) fn kernel_name(kernelspec_dir: &Path) -> String {
    kernelspec_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".into())
}

fn init_stderr(level: LogLevel, prefix: Option<&str>, file: Option<RunLog>) {
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level.tracing());
    let launcher = prefix.map(|prefix| {
        tracing_subscriber::fmt::layer()
            .with_writer(Prefixed(Some(format!("[sshpyk {prefix}] "))))
            .with_ansi(color)
            .with_target(false)
            .without_time()
            .with_filter(filter)
    });
    let command = prefix.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(CommandFormat)
            .with_filter(filter)
    });
    let file = file.map(|file| {
        tracing_subscriber::fmt::layer()
            .with_writer(file)
            .with_ansi(false)
            .with_target(false)
            .with_filter(filter)
    });
    tracing_subscriber::registry()
        .with(launcher)
        .with(command)
        .with(file)
        .init();
}

/// A command's (not a launcher's) lines, spoken as its errors are: `sshpyk: warning: ...`,
/// `sshpyk: debug: ...`, and plain `sshpyk: ...` for information.
struct CommandFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for CommandFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "sshpyk: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Stderr, each line starting with the prefix (if any).
struct Prefixed(Option<String>);

impl<'a> MakeWriter<'a> for Prefixed {
    type Writer = PrefixedLines<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        PrefixedLines(self.0.as_deref())
    }
}

struct PrefixedLines<'a>(Option<&'a str>);

impl Write for PrefixedLines<'_> {
    /// tracing hands over one whole event per call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        match self.0 {
            None => stderr.write_all(buf)?,
            Some(prefix) => {
                let mut out = Vec::with_capacity(buf.len() + prefix.len());
                for line in buf.split_inclusive(|&b| b == b'\n') {
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(line);
                }
                stderr.write_all(&out)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `<runtime dir>/logs/<kernel>`.
pub(crate) fn kernel_dir(name: &str) -> Result<PathBuf> {
    Ok(crate::runtime::dir()?.join("logs").join(name))
}

/// This run's log file, shared by every event; rotated past [`MAX_FILE_BYTES`].
#[derive(Clone)]
struct RunLog(Arc<Mutex<RunFile>>);

struct RunFile {
    path: PathBuf,
    file: File,
    written: u64,
}

impl RunLog {
    /// A fresh file for this run; the kernel's older runs beyond [`KEPT_RUNS`] are removed.
    fn create(name: &str) -> Result<Self> {
        let dir = kernel_dir(name)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(Error::io(format!("cannot create {}", dir.display())))?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let path = dir.join(format!("{started:010}-{}.log", std::process::id()));
        let file = open_private(&path)?;
        prune(&dir, KEPT_RUNS);
        Ok(RunLog(Arc::new(Mutex::new(RunFile {
            path,
            file,
            written: 0,
        }))))
    }
}

/// Removes the oldest runs' files in `dir` beyond the `keep` newest.
fn prune(dir: &Path, keep: usize) {
    let runs = runs(dir);
    for old in &runs[..runs.len().saturating_sub(keep)] {
        let _ = std::fs::remove_file(&old.path);
        let _ = std::fs::remove_file(old.previous());
    }
}

fn open_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(Error::io(format!("cannot create {}", path.display())))
}

impl Write for RunLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut run = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if run.written + buf.len() as u64 > MAX_FILE_BYTES {
            let previous = Run::of(run.path.clone()).previous();
            std::fs::rename(&run.path, previous)?;
            run.file = open_private(&run.path).map_err(std::io::Error::other)?;
            run.written = 0;
        }
        run.file.write_all(buf)?;
        run.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RunLog {
    type Writer = RunLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// One launcher run's log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) path: PathBuf,
    /// Seconds since the epoch when the run started.
    pub(crate) started: u64,
    pub(crate) pid: u32,
}

impl Run {
    fn of(path: PathBuf) -> Self {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (started, pid) = stem.split_once('-').unwrap_or_default();
        Run {
            started: started.parse().unwrap_or(0),
            pid: pid.parse().unwrap_or(0),
            path,
        }
    }

    /// Where the run's older lines went when its file was rotated.
    pub(crate) fn previous(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Is the launcher of this run still running?
    pub(crate) fn is_live(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    }
}

/// Every run logged in `dir`, oldest first.
pub(crate) fn runs(dir: &Path) -> Vec<Run> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<Run> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(Run::of)
        .collect();
    runs.sort_by_key(|r| (r.started, r.path.clone()));
    runs
}

/// `2026-11-30 15:22:25 UTC` for seconds since the epoch.
pub(crate) fn utc_time(secs: u64) -> String {
    let t = UtcTime::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_calendar_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_796_052_145), "2026-11-30 15:22:25 UTC");
    }

    #[test]
    fn run_files_name_their_start_and_pid_and_sort_by_start() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "0000000200-7.log",
            "0000000100-9.log",
            "0000000100-9.log.1",
            "x.txt",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = runs(dir.path());
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].started, found[0].pid), (100, 9));
        assert_eq!(found[0].previous(), dir.path().join("0000000100-9.log.1"));
        assert_eq!((found[1].started, found[1].pid), (200, 7));
        prune(dir.path(), 1);
        assert_eq!(runs(dir.path()), [found[1].clone()]);
        assert!(!found[0].previous().exists());
    }

    #[test]
    fn a_run_file_is_private_and_rotates_past_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000100-9.log");
        let mut log = RunLog(Arc::new(Mutex::new(RunFile {
            file: open_private(&path).unwrap(),
            path: path.clone(),
            written: 0,
        })));
        let line = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_FILE_BYTES >> 20) + 1 {
            log.write_all(&line).unwrap();
        }
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let previous = Run::of(path.clone()).previous();
        assert_eq!(std::fs::metadata(&previous).unwrap().len(), MAX_FILE_BYTES);
        assert_eq!((mode(&path), mode(&previous)), (0o600, 0o600));
    }
}
