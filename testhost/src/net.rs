//! Network namespaces: a "remote host" with its own address, reached through a veth pair.
//!
//! Instance `n` (0..=255) owns the namespace `sshpyk-<n>`, the veth pair `spk<n>h` (host side,
//! 10.231.<n>.1/24) and `spk<n>r` (inside the namespace, 10.231.<n>.2/24), and a low-priority
//! `unreachable 10.231.<n>.0/24` route on the host: whenever the veth route is missing (link
//! down, teardown under way), traffic for the namespace fails here instead of leaving through
//! the default route. Those are the only addresses this module ever creates, and only in a
//! subnet that no route (in any table) and no address of this machine overlaps: a VPN, a
//! container network or another tool's namespace there would otherwise answer in our place.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
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

    /// Claims a free namespace name whose subnet no route or address of this machine overlaps,
    /// and takes the subnet with the guard route. `ip netns add` fails when the name exists,
    /// which makes the claim atomic even against processes that do not take our lock; the
    /// subnet is checked again once the guard route is in, and given up if anything else
    /// appeared there meanwhile.
    pub fn create() -> Result<Self> {
        // Start from the pid so that parallel processes rarely collide in the first place.
        Netns::create_from(std::process::id())
    }

    fn create_from(first: u32) -> Result<Self> {
        for i in 0..256 {
            let net = Netns::new(((first + i) % 256) as u8);
            if !occupants(net.subnet())?.is_empty() {
                continue;
            }
            let out = Command::new("ip")
                .args(["netns", "add", &net.name])
                .output()
                .context("running `ip netns add`")?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if stderr.contains("File exists") {
                    continue;
                }
                bail!("`ip netns add {}` failed: {}", net.name, stderr.trim());
            }
            if let Err(e) = ip(&net.guard_route("add")) {
                // Not `destroy`, whose guard route deletion could hit an identical foreign one.
                ip(&["netns", "del", &net.name])?;
                if e.to_string().contains("File exists") {
                    continue;
                }
                return Err(e);
            }
            if occupants(net.subnet())?.len() == 1 {
                return Ok(net);
            }
            net.destroy()?;
        }
        bail!(
            "no free subnet for a test host: a route or address of this machine overlaps every \
             10.231.N.0/24 whose namespace name sshpyk-N is free (see `ip route show table all`)"
        )
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

    /// 10.231.<n>.0/24.
    fn subnet(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, 231, self.n, 0), 24)
    }

    fn guard_route(&self, action: &str) -> [String; 6] {
        let prefix = format!("10.231.{}.0/24", self.n);
        ["route", action, "unreachable", &prefix, "metric", "4000"].map(String::from)
    }
}

/// The routes (of every table) and addresses of this machine that overlap `subnet`, as
/// `ip -j` prints them. A default route overlaps everything and does not count.
fn occupants(subnet: (Ipv4Addr, u8)) -> Result<Vec<serde_json::Value>> {
    let routes = ip_json(&["-4", "route", "show", "table", "all"])?;
    let addresses = ip_json(&["-4", "addr", "show"])?;
    Ok(overlapping(subnet, &routes, &addresses))
}

fn overlapping(
    subnet: (Ipv4Addr, u8),
    routes: &serde_json::Value,
    addresses: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let mut found: Vec<serde_json::Value> = list(routes)
        .into_iter()
        .filter(|route| {
            route["dst"]
                .as_str()
                .and_then(parse_prefix)
                .is_some_and(|dst| dst.1 > 0 && overlaps(dst, subnet))
        })
        .collect();
    for link in list(addresses) {
        found.extend(list(&link["addr_info"]).into_iter().filter(|a| {
            let local = a["local"].as_str().and_then(|s| s.parse().ok());
            let len = a["prefixlen"].as_u64().and_then(|l| u8::try_from(l).ok());
            local
                .zip(len)
                .is_some_and(|address| overlaps(address, subnet))
        }));
    }
    found
}

/// `10.1.2.0/24`, or a host `10.1.2.3` (/32).
fn parse_prefix(text: &str) -> Option<(Ipv4Addr, u8)> {
    match text.split_once('/') {
        Some((address, len)) => Some((address.parse().ok()?, len.parse().ok()?)),
        None => Some((text.parse().ok()?, 32)),
    }
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1).min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .with_context(|| format!("running `ip -j {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip -j {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the output of `ip -j {}`", args.join(" ")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 231, 7, 0), 24);

    #[test]
    fn overlapping_routes_and_addresses_occupy_a_subnet_but_the_default_route_does_not() {
        let routes = json!([
            {"dst": "default", "dev": "eth0"},
            {"dst": "192.168.1.0/24", "dev": "eth0"},
            {"dst": "10.231.8.0/24", "dev": "x"},
            {"dst": "10.231.0.0/16", "dev": "vpn0"},
            {"type": "local", "dst": "10.231.7.9", "table": "local"},
        ]);
        let found = overlapping(SUBNET, &routes, &json!([]));
        assert_eq!(found, [routes[3].clone(), routes[4].clone()]);
        let addresses = json!([
            {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "d", "addr_info": [{"local": "10.231.7.200", "prefixlen": 30}]},
        ]);
        let found = overlapping(SUBNET, &json!([]), &addresses);
        assert_eq!(found, [addresses[1]["addr_info"][0].clone()]);
        assert!(
            overlapping(SUBNET, &routes.as_array().unwrap()[..3].into(), &json!([])).is_empty()
        );
    }

    /// An address of this machine in the subnet the picker would take first, and a route
    /// into part of the next one: it takes neither. Only a veth pair of this machine (left
    /// down) and a blackhole route are made; no packet is sent.
    #[test]
    fn the_picker_skips_subnets_in_use_on_this_machine() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        /// Deleted on drop, test failed or not: `ip ARGS` undone by `ip UNDO`.
        struct Undo(Vec<String>);
        impl Drop for Undo {
            fn drop(&mut self) {
                let _ = ip(&self.0);
            }
        }
        let _lock = crate::registry::lock().unwrap();
        let pid = std::process::id();
        let mut free = (0..256)
            .map(|i| Netns::new(((pid + i) % 256) as u8))
            .filter(|net| {
                occupants(net.subnet()).unwrap().is_empty()
                    && !Path::new("/run/netns").join(&net.name).exists()
            });
        let (first, second) = (free.next().unwrap(), free.next().unwrap());
        let veth = format!("spkt{pid}");
        ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            &format!("spku{pid}"),
        ])
        .unwrap();
        let _veth = Undo(["link", "del", &veth].map(String::from).to_vec());
        let address = format!("10.231.{}.9/24", first.n);
        ip(&["addr", "add", &address, "dev", &veth]).unwrap();
        let route = |action: &str| {
            let prefix = format!("10.231.{}.128/25", second.n);
            ["route", action, "blackhole", &prefix]
                .map(String::from)
                .to_vec()
        };
        ip(&route("add")).unwrap();
        let _route = Undo(route("del"));
        let picked = Netns::create_from(u32::from(first.n)).unwrap();
        let destroyed = picked.destroy();
        assert!(
            ![first.n, second.n].contains(&picked.n),
            "picked {}",
            picked.n
        );
        destroyed.unwrap();
    }
}
