//! Where a build's `RUN` steps may connect, on a single host.
//!
//! BuildKit in dockerd runs every `RUN` step on the engine's default bridge (`docker0`), whose
//! NAT reaches everything the host reaches: its own services on any of its addresses, the other
//! containers (customers' apps), private networks and the cloud metadata endpoint. `slipway up`
//! installs two iptables chains for everything that comes in on that bridge (by interface, not
//! source address, which a step with raw sockets could forge):
//! - `SLIPWAY-BUILD-EGRESS` (from `DOCKER-USER`, the forward path Docker leaves to users): replies
//!   pass; the resolvers of `/etc/resolv.conf` on port 53 and the operator's allowed ranges pass;
//!   loopback, private (RFC 1918), shared (100.64/10), link-local (169.254/16: metadata),
//!   multicast and reserved ranges are rejected; the internet passes.
//! - `SLIPWAY-BUILD-HOST` (from `INPUT`): replies pass, anything else to the host is rejected.
//! - the bridge's ports are isolated from each other ([`isolate_ports`]), so one build's step
//!   cannot answer ARP for another's gateway.
//!
//! Rejected, not dropped: a build that tries gets "connection refused" at once instead of hanging
//! until its timeout. `ADD <url>` is fetched by the engine itself, outside these rules: the
//! Dockerfile screen ([`crate::policy`]) refuses it. Containers an earlier Slipway left on the
//! default bridge fall under the same rules (apps run on their own network now).

use std::net::IpAddr;
use std::process::Command;

/// The ranges a build never reaches unless the operator allows one: everything that is not the
/// internet.
pub const BLOCKED: [&str; 10] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

const EGRESS: &str = "SLIPWAY-BUILD-EGRESS";
const HOST: &str = "SLIPWAY-BUILD-HOST";

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot run iptables: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("iptables {args} failed: {stderr}")]
    Iptables { args: String, stderr: String },
    #[error("`{0}` is not an IPv4 range (ADDRESS/BITS)")]
    Range(String),
}

/// A validated IPv4 range, `a.b.c.d/n`.
pub fn parse_range(text: &str) -> Result<String, EgressError> {
    let (address, bits) = text.split_once('/').unwrap_or((text, "32"));
    let valid =
        address.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32);
    if valid {
        Ok(format!("{address}/{bits}"))
    } else {
        Err(EgressError::Range(text.to_owned()))
    }
}

fn iptables(args: &[&str]) -> Result<bool, EgressError> {
    xtables("iptables", &["-w"], args)
}

/// `ebtables ARGS`, read like [`iptables`].
fn ebtables(args: &[&str]) -> Result<bool, EgressError> {
    xtables("ebtables", &["--concurrent"], args)
}

fn xtables(program: &str, lock: &[&str], args: &[&str]) -> Result<bool, EgressError> {
    let output = Command::new(program)
        .args(lock)
        .args(args)
        .output()
        .map_err(EgressError::Spawn)?;
    Ok(output.status.success()).and_then(|ok| {
        // `-C` (check) reports absence by its exit status; anything else must succeed.
        if ok || args.first() == Some(&"-C") {
            Ok(ok)
        } else {
            Err(EgressError::Iptables {
                args: format!("{program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    })
}

/// Puts a jump to `chain` at the top of `from`, once.
fn jump(from: &str, interface: &str, subnet: &str, chain: &str) -> Result<(), EgressError> {
    // By interface alone: a step that forges its source address (raw sockets) must not slip
    // past. The form with `-s SUBNET` an earlier version installed goes.
    delete_all(from, &["-i", interface, "-s", subnet, "-j", chain])?;
    let rule = ["-i", interface, "-j", chain];
    let mut check = vec!["-C", from];
    check.extend_from_slice(&rule);
    if !iptables(&check)? {
        let mut insert = vec!["-I", from, "1"];
        insert.extend_from_slice(&rule);
        iptables(&insert)?;
    }
    Ok(())
}

/// Deletes every copy of `rule` from `chain`; whether there was one.
fn delete_all(chain: &str, rule: &[&str]) -> Result<bool, EgressError> {
    let mut found = false;
    loop {
        let mut check = vec!["-C", chain];
        check.extend_from_slice(rule);
        if !iptables(&check)? {
            return Ok(found);
        }
        found = true;
        let mut delete = vec!["-D", chain];
        delete.extend_from_slice(rule);
        // Another installation starting at the same moment may have deleted it first.
        if iptables(&delete).is_err() && iptables(&check)? {
            let mut retry = vec!["-D", chain];
            retry.extend_from_slice(rule);
            iptables(&retry)?;
        }
    }
}

/// The nameservers of `resolv` that are not on the host itself (Docker gives the default
/// bridge the host's resolvers, or public ones when those are local).
pub fn resolvers(resolv: &str) -> Vec<IpAddr> {
    resolv
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
        .collect()
}

/// Adds `rule` to `chain` unless it is there: at the top with `first`, else at the end.
fn ensure(chain: &str, first: bool, rule: &[&str]) -> Result<(), EgressError> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if !iptables(&check)? {
        let mut add = if first {
            vec!["-I", chain, "1"]
        } else {
            vec!["-A", chain]
        };
        add.extend_from_slice(rule);
        iptables(&add)?;
    }
    Ok(())
}

/// Replies to connections a build was allowed to make.
const REPLIES: [&str; 6] = [
    "-m",
    "conntrack",
    "--ctstate",
    "RELATED,ESTABLISHED",
    "-j",
    "RETURN",
];

/// Lets DNS to the resolvers of `resolv` through `chain`.
fn allow_resolvers(chain: &str, resolv: &str) -> Result<(), EgressError> {
    for resolver in resolvers(resolv) {
        let resolver = format!("{resolver}/32");
        for protocol in ["udp", "tcp"] {
            ensure(
                chain,
                true,
                &[
                    "-d", &resolver, "-p", protocol, "-m", protocol, "--dport", "53", "-j",
                    "RETURN",
                ],
            )?;
        }
    }
    Ok(())
}

/// Installs (or refreshes) the rules for builds on `interface` with `subnet`, letting through
/// the `allowed` ranges of installation `instance`.
///
/// Several installations may share one engine (and so one bridge and its rules): the rejecting
/// rules are shared and added once; each installation's allowed ranges carry its id in a comment
/// and are replaced when it starts again, so a range removed from its settings closes and the
/// others' stay.
///
/// # Errors
/// When iptables is missing or refuses (not root).
pub fn install(
    interface: &str,
    subnet: &str,
    instance: &str,
    allowed: &[String],
) -> Result<(), EgressError> {
    for chain in [EGRESS, HOST] {
        // Created by whichever installation gets there first.
        if !iptables(&["-n", "-L", chain]).unwrap_or(false)
            && iptables(&["-N", chain]).is_err()
            && !iptables(&["-n", "-L", chain]).unwrap_or(false)
        {
            iptables(&["-N", chain])?;
        }
    }
    for range in BLOCKED {
        ensure(
            EGRESS,
            false,
            &[
                "-d",
                range,
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-net-prohibited",
            ],
        )?;
    }
    remove_allowed(instance)?;
    let tag = allow_tag(instance);
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    allow_resolvers(EGRESS, &resolv)?;
    for range in allowed {
        iptables(&[
            "-I",
            EGRESS,
            "1",
            "-d",
            range,
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "RETURN",
        ])?;
    }
    ensure(EGRESS, true, &REPLIES)?;
    ensure(
        HOST,
        false,
        &["-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
    )?;
    // A resolver on one of the host's own addresses is reached through INPUT.
    allow_resolvers(HOST, &resolv)?;
    ensure(HOST, true, &REPLIES)?;
    // Docker's own chain for user rules, evaluated first on the forward path; FORWARD itself
    // when the engine runs without it.
    let forward = if iptables(&["-n", "-L", "DOCKER-USER"]).unwrap_or(false) {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    jump(forward, interface, subnet, EGRESS)?;
    jump("INPUT", interface, subnet, HOST)?;
    Ok(())
}

/// Keeps every port of the build bridge `bridge` isolated (the kernel's bridge port flag: no
/// frame passes between two isolated ports; each still reaches the bridge itself, the
/// gateway), setting the flag on a new port as soon as the kernel reports a link change, and
/// at the latest within [`crate::steps::POLL`], until `shutdown`.
///
/// The steps of every build share the bridge, and Docker leaves them `NET_RAW`: a step that
/// answers ARP for the gateway would receive, and could answer, another tenant's build traffic
/// (its DNS and its downloads). The iptables rules see IP between ports, not ARP.
pub async fn isolate_ports(bridge: String, shutdown: tokio_util::sync::CancellationToken) {
    use tokio::io::AsyncBufReadExt;
    let ports = std::path::PathBuf::from(format!("/sys/class/net/{bridge}/brif"));
    let mut warned = false;
    let mut interval = tokio::time::interval(crate::steps::POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The kernel's link events (`ip monitor link`) wake the scan as soon as a port joins the
    // bridge, well before the step's own process runs; the poll stays as the fallback.
    // (Through `setpriv --pdeathsig`, so it dies with this process however this one ends.)
    let mut monitor = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "ip", "-o", "monitor", "link"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok();
    let mut events = monitor
        .as_mut()
        .and_then(|child| child.stdout.take())
        .map(|out| tokio::io::BufReader::new(out).lines());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
            line = async {
                match events.as_mut() {
                    Some(lines) => lines.next_line().await,
                    None => std::future::pending().await,
                }
            } => {
                if !matches!(line, Ok(Some(_))) {
                    // The monitor ended: polling alone from now on.
                    events = None;
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(&ports) else {
            continue;
        };
        for entry in entries.flatten() {
            // brif/PORT is the port's `brport` directory.
            let flag = entry.path().join("isolated");
            if std::fs::read_to_string(&flag).is_ok_and(|v| v.trim() == "1") {
                continue;
            }
            if let Err(error) = std::fs::write(&flag, "1")
                && !warned
            {
                warned = true;
                tracing::warn!(%error, port = ?entry.file_name(), "cannot isolate a build bridge port: builds may reach each other's network traffic");
            }
        }
    }
}

/// In a network namespace of the build engine's own, where every veth is a port of its build
/// bridge: no frame is forwarded from one such port to another, from the first frame on (the
/// static counterpart of [`isolate_ports`], which closes it within a poll).
///
/// # Errors
/// When ebtables is missing or refuses.
pub fn isolate_veth_ports() -> Result<(), EgressError> {
    let rule = ["FORWARD", "-i", "veth+", "-o", "veth+", "-j", "DROP"];
    let listed = Command::new("ebtables")
        .args(["--concurrent", "-L", "FORWARD"])
        .output()
        .map_err(EgressError::Spawn)?;
    if String::from_utf8_lossy(&listed.stdout).contains("-i veth+ -o veth+ -j DROP") {
        return Ok(());
    }
    let mut add = vec!["-A"];
    add.extend_from_slice(&rule);
    ebtables(&add).map(|_| ())
}

/// The comment on installation `instance`'s allowed-range rules.
fn allow_tag(instance: &str) -> String {
    format!("slipway-allow:{instance}")
}

/// Deletes installation `instance`'s allowed-range rules (`--build-allow-range`) from the
/// egress chain; the shared rules and the other installations' ranges stay. The number deleted
/// (none when the chain does not exist).
///
/// # Errors
/// When iptables is missing or refuses (not root).
pub fn remove_allowed(instance: &str) -> Result<usize, EgressError> {
    let tag = allow_tag(instance);
    let listed = Command::new("iptables")
        .args(["-w", "-S", EGRESS])
        .output()
        .map_err(EgressError::Spawn)?;
    let mut deleted = 0;
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        // `-S` prints the comment in quotes; the arguments are without them.
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_matches('"'))
            .collect();
        if words.first() == Some(&"-A") && words.contains(&tag.as_str()) {
            let mut delete = vec!["-D"];
            delete.extend_from_slice(&words[1..]);
            iptables(&delete)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Whether a failed build's last lines look like a connection the rules refused (the hint then
/// names the setting).
pub fn refused_in(lines: &[String]) -> bool {
    lines.iter().any(|line| {
        let line = line.to_ascii_lowercase();
        [
            "network is unreachable",
            "connection refused",
            "no route to host",
            "prohibited",
        ]
        .iter()
        .any(|sign| line.contains(sign))
    })
}

/// Removes the jumps to the chains (`--build-egress open`, `slipway down`), so rules an earlier
/// `slipway up` installed no longer apply; whether there were any.
///
/// # Errors
/// When iptables is missing or refuses.
pub fn remove(interface: &str, subnet: &str) -> Result<bool, EgressError> {
    let mut found = false;
    for (from, chain) in [
        ("DOCKER-USER", EGRESS),
        ("FORWARD", EGRESS),
        ("INPUT", HOST),
    ] {
        if iptables(&["-n", "-L", from]).unwrap_or(false) {
            found |= delete_all(from, &["-i", interface, "-j", chain])?;
            found |= delete_all(from, &["-i", interface, "-s", subnet, "-j", chain])?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_resolvers_are_read_strictly() {
        assert_eq!(
            parse_range("10.1.0.0/16").ok().as_deref(),
            Some("10.1.0.0/16")
        );
        assert_eq!(parse_range("10.1.2.3").ok().as_deref(), Some("10.1.2.3/32"));
        for bad in [
            "10.1.0.0/33",
            "10.1.0/8",
            "fd00::/8",
            "x",
            "10.0.0.0/8 -j ACCEPT",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        assert_eq!(
            resolvers(
                "# c\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nsearch x\n"
            ),
            ["10.255.255.53".parse::<IpAddr>().expect("ip")]
        );
    }
}
