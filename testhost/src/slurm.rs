//! A single-node Slurm cluster in the host's network namespace: munged, slurmctld and slurmd,
//! each started with `ip netns exec` (so the namespace's teardown ends them), their files in a
//! directory of the caller's. The node is the host itself, as a login node that is also a
//! compute node: srun steps run in the namespace, as the ssh sessions do.
//!
//! `ip netns exec` gives each command a fresh /sys without cgroups, and Slurm refuses to
//! autodetect this machine's hybrid v1+v2 hierarchy: slurmd gets the v1 hierarchies mounted in
//! its own mount namespace and `CgroupPlugin=cgroup/v1`; `proctrack/linuxproc` and `task/none`
//! need no cgroups.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The node's name (`SLURMD_NODENAME` in steps).
pub const SLURM_NODE: &str = "sshpyk-node";
/// The one partition.
pub const SLURM_PARTITION: &str = "debug";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CGROUPS: &str = "cpu cpuacct cpuset memory devices freezer blkio pids";

/// Starts the cluster in `netns`, its daemons listening on `address`; its configuration is
/// `dir/slurm.conf` (what `SLURM_CONF` must name for clients). Returns the daemons once the node
/// is idle (the namespace's teardown kills them; the caller reaps them).
pub(crate) fn start(dir: &Path, netns: &str, address: &str) -> Result<Vec<Child>> {
    let mut daemons = Vec::new();
    match start_daemons(dir, netns, address, &mut daemons) {
        Ok(()) => Ok(daemons),
        Err(e) => {
            for mut daemon in daemons {
                let _ = daemon.kill();
                let _ = daemon.wait();
            }
            Err(e)
        }
    }
}

fn start_daemons(dir: &Path, netns: &str, address: &str, daemons: &mut Vec<Child>) -> Result<()> {
    for sub in ["state", "spool"] {
        fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.display()))?;
    }
    let conf = dir.join("slurm.conf");
    fs::write(&conf, slurm_conf(dir, address)?).context("writing slurm.conf")?;
    fs::write(dir.join("cgroup.conf"), "CgroupPlugin=cgroup/v1\n")
        .context("writing cgroup.conf")?;
    let munge_socket = dir.join("munge.sock");
    daemons.push(spawn(
        netns,
        dir,
        "munged",
        &format!(
            "exec munged --force --foreground --socket={} --pid-file={} --seed-file={} --log-file={}",
            munge_socket.display(),
            dir.join("munged.pid").display(),
            dir.join("munged.seed").display(),
            dir.join("munged.log").display()
        ),
    )?);
    wait_for(|| munge_socket.exists(), "munged's socket")?;
    daemons.push(spawn(
        netns,
        dir,
        "slurmctld",
        &format!("exec slurmctld -D -f {}", conf.display()),
    )?);
    let mounts = format!(
        "mount -t tmpfs cgroup /sys/fs/cgroup && for c in {CGROUPS}; do mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done"
    );
    daemons.push(spawn(
        netns,
        dir,
        "slurmd",
        &format!(
            "{mounts} && exec slurmd -D -f {} -N {SLURM_NODE}",
            conf.display()
        ),
    )?);
    let idle = || {
        Command::new("ip")
            .args(["netns", "exec", netns, "sinfo", "-h", "-o", "%T"])
            .env("SLURM_CONF", &conf)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
    };
    wait_for(idle, "the Slurm node to be idle").with_context(|| {
        format!(
            "see {} and {}",
            dir.join("slurmctld.log").display(),
            dir.join("slurmd.log").display()
        )
    })
}

/// Whether this machine has Slurm and munge installed (`scripts/setup` installs them).
pub fn slurm_installed() -> bool {
    [
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/sbin/munged",
        "/usr/bin/srun",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

fn slurm_conf(dir: &Path, address: &str) -> Result<String> {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name")?
        .trim()
        .to_string();
    let file = |name: &str| -> PathBuf { dir.join(name) };
    Ok(format!(
        "ClusterName=sshpyk\n\
         SlurmctldHost={host}({address})\n\
         SlurmUser=root\n\
         SlurmdUser=root\n\
         AuthType=auth/munge\n\
         CredType=cred/munge\n\
         AuthInfo=socket={munge}\n\
         StateSaveLocation={state}\n\
         SlurmdSpoolDir={spool}\n\
         SlurmctldPidFile={ctld_pid}\n\
         SlurmdPidFile={slurmd_pid}\n\
         SlurmctldLogFile={ctld_log}\n\
         SlurmdLogFile={slurmd_log}\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core\n\
         MpiDefault=none\n\
         ReturnToService=2\n\
         SchedulerType=sched/backfill\n\
         NodeName={SLURM_NODE} NodeHostname={host} NodeAddr={address} CPUs=2 State=UNKNOWN\n\
         PartitionName={SLURM_PARTITION} Nodes={SLURM_NODE} Default=YES MaxTime=INFINITE State=UP\n",
        munge = file("munge.sock").display(),
        state = file("state").display(),
        spool = file("spool").display(),
        ctld_pid = file("slurmctld.pid").display(),
        slurmd_pid = file("slurmd.pid").display(),
        ctld_log = file("slurmctld.log").display(),
        slurmd_log = file("slurmd.log").display(),
    ))
}

/// Starts `script` under `sh` in the namespace, its output in `dir/<name>.out`.
fn spawn(netns: &str, dir: &Path, name: &str, script: &str) -> Result<Child> {
    let out = fs::File::create(dir.join(format!("{name}.out")))
        .with_context(|| format!("creating {name}.out"))?;
    let err = out.try_clone()?;
    Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> Result<()> {
    let end = Instant::now() + READY_TIMEOUT;
    while !ready() {
        if Instant::now() > end {
            bail!("timed out after {READY_TIMEOUT:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
