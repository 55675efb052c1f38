//! `sshpyk ps`: the running kernels, as their launchers describe themselves over their control
//! sockets.

use std::time::SystemTime;

use serde::Serialize;

use super::mounts::mount_line;
use crate::cli::PsArgs;
use crate::control::{self, KernelStatus, DESCRIBE_WAIT};
use crate::error::Result;

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    status: KernelStatus,
    uptime_secs: u64,
}

pub(crate) async fn run(args: PsArgs) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rows: Vec<Row> = control::running(DESCRIBE_WAIT)
        .await?
        .into_iter()
        .map(|(_, status)| Row {
            uptime_secs: now.saturating_sub(status.started),
            status,
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serializes")
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no running sshpyk kernels");
        return Ok(());
    }
    for Row {
        status,
        uptime_secs,
    } in &rows
    {
        let waiting = match status.down_since {
            Some(since) => format!(" (link down for {})", uptime(now.saturating_sub(since))),
            None => String::new(),
        };
        println!(
            "{}  {} ({})  remote pid {}  up {}  {}{waiting}  launcher pid {}",
            status.kernel_name,
            status.ssh_host_alias,
            status.hostname,
            status.remote_pid,
            uptime(*uptime_secs),
            status.state,
            status.launcher_pid
        );
        if let Some(slurm) = &status.slurm {
            println!("  slurm job {} on node {}", slurm.job_id, slurm.node);
        }
        for mount in &status.mounts {
            println!("  {}", mount_line(mount));
        }
    }
    Ok(())
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
