//! Network namespaces: a "remote host" with its own address, reached through a veth pair.
//!
//! Instance `n` (0..=255) owns the namespace `sshpyk-<n>`, the veth pair `spk<n>h` (host side,
//! 10.231.<n>.1/24) and `spk<n>r` (inside the namespace, 10.231.<n>.2/24), and a low-priority
//! `unreachable 10.231.<n>.0/24` route on the host: whenever the veth route is missing (link
//! down, teardown under way), traffic for the namespace fails here instead of leaving through
//! the default route. Those are the only addresses this module ever creates.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs;

pub(crate) const NETNS_PREFIX: &str = "sshpyk-";

#[derive(Debug)]
pub(crate) struct Netns {
    pub name: String,
    veth_host: String,
    veth_remote: String,
    n: u8,
}

impl Netns {
    fn new(n: u8) -> Self {
        Netns {
            name: format!("{NETNS_PREFIX}{n}"),
            veth_host: format!("spk{n}h"),
            veth_remote: format!("spk{n}r"),
            n,
        }
    }

    /// The namespace of that name, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(Netns::new(name.strip_prefix(NETNS_PREFIX)?.parse().ok()?))
    }

    /// Claims a free namespace name. `ip netns add` fails when the name exists, which makes the
    /// claim atomic even against processes that do not take our lock.
    pub fn create() -> Result<Self> {
        // Start from the pid so that parallel processes rarely collide in the first place.
        let first = std::process::id() % 256;
        for i in 0..256 {
            let net = Netns::new(((first + i) % 256) as u8);
            let out = Command::new("ip")
                .args(["netns", "add", &net.name])
                .output()
                .context("running `ip netns add`")?;
            if out.status.success() {
                return Ok(net);
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("File exists") {
                bail!("`ip netns add {}` failed: {}", net.name, stderr.trim());
            }
        }
        bail!("no free network namespace name: sshpyk-0 to sshpyk-255 all exist")
    }

    /// Creates the veth pair and addresses. Needs the namespace from `create`. With `behind`,
    /// the pair's other end lives in that namespace instead of on this machine: the host is
    /// reachable only from there (through a bastion), and the guard route makes this machine
    /// fail at once to reach it directly.
    pub fn configure(&self, behind: Option<&str>) -> Result<()> {
        // A host-side veth left over by a run killed before it moved the peer away.
        if Path::new("/sys/class/net").join(&self.veth_host).exists() {
            ip(&["link", "del", &self.veth_host])?;
        }
        let (ns, host, remote) = (&self.name, &self.veth_host, &self.veth_remote);
        ip(&self.guard_route("replace"))?;
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", remote, "netns", ns,
        ])?;
        let mut near = vec![];
        if let Some(bastion) = behind {
            ip(&["link", "set", host, "netns", bastion])?;
            near = vec!["-n", bastion];
        }
        let host_cidr = format!("{}/24", self.host_address());
        ip(&[&near[..], &["addr", "add", &host_cidr, "dev", host]].concat())?;
        ip(&[&near[..], &["link", "set", host, "up"]].concat())?;
        let remote_cidr = format!("{}/24", self.remote_address());
        ip(&["-n", ns, "addr", "add", &remote_cidr, "dev", remote])?;
        ip(&["-n", ns, "link", "set", remote, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    pub fn host_address(&self) -> String {
        format!("10.231.{}.1", self.n)
    }

    pub fn remote_address(&self) -> String {
        format!("10.231.{}.2", self.n)
    }

    /// Sets the namespace's end of the veth pair down or up. Down, the host keeps its route
    /// (flagged linkdown) and the veth drops the packets: connections stall and new ones time
    /// out, as when a cable is pulled, rather than failing at once with "no route".
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip(&self.link_command(up)[1..])
    }

    /// The `ip` command line that `set_link` runs.
    pub fn link_command(&self, up: bool) -> Vec<String> {
        let state = if up { "up" } else { "down" };
        [
            "ip",
            "-n",
            &self.name,
            "link",
            "set",
            &self.veth_remote,
            state,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Kills everything in the namespace, then deletes the veth pair, the guard route and the
    /// namespace, in that order: the namespace name is what marks the rest as ours. Parts that
    /// are already gone are skipped.
    pub fn destroy(&self) -> Result<()> {
        // Deleting a namespace only unmounts its name: it lives on while a process is inside.
        procs::kill_until_gone(|| pids(&self.name), Duration::from_secs(5))
            .with_context(|| format!("emptying network namespace {}", self.name))?;
        if Path::new("/sys/class/net").join(&self.veth_host).exists() {
            ip(&["link", "del", &self.veth_host])?;
        }
        if let Err(e) = ip(&self.guard_route("del")) {
            if !e.to_string().contains("No such process") {
                return Err(e);
            }
        }
        if Path::new("/run/netns").join(&self.name).exists() {
            ip(&["netns", "del", &self.name])?;
        }
        Ok(())
    }

    fn guard_route(&self, action: &str) -> [String; 6] {
        let prefix = format!("10.231.{}.0/24", self.n);
        ["route", action, "unreachable", &prefix, "metric", "4000"].map(String::from)
    }
}

/// Every process in the namespace (empty if it does not exist).
pub(crate) fn pids(netns: &str) -> BTreeSet<u32> {
    Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn list() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running `ip netns list`")?;
    if !out.status.success() {
        bail!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Lines look like "sshpyk-3 (id: 2)" or just "sshpyk-3".
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect())
}

fn ip(args: &[impl AsRef<str>]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .with_context(|| format!("running `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
