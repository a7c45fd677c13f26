//! `skiff iptables`: the nat rules that send a pod's TCP through skiff.
//! (Where a redirected connection was going is read by
//! [`crate::io::original_dst`].)
//!
//! The rules follow linkerd2-proxy-init and Istio's istio-iptables: two
//! chains of skiff's own in the nat table, `SKIFF_INBOUND` (jumped to from
//! `PREROUTING`: connections arriving at the pod) and `SKIFF_OUTBOUND`
//! (from `OUTPUT`: connections the pod's processes open). Each returns
//! early for what must not be captured and ends in a `REDIRECT` to skiff's
//! inbound or outbound port. Outbound skips skiff's own uid (else skiff's
//! upstream connections would come back to it: a loop), loopback, and the
//! configured ports and networks; inbound skips the admin port (kubelet's
//! probes of skiff itself) and the configured ports.
//!
//! Applying first removes whatever skiff applied before, so applying twice
//! leaves the same rules as applying once, and `--remove` leaves the
//! tables as they were before skiff. The same rules go to `ip6tables`
//! when the host has IPv6.

use std::fmt;
use std::net::IpAddr;
use std::process::Command;

use skiff_config::sidecar::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};

/// The chain for connections arriving at the pod.
pub(crate) const INBOUND_CHAIN: &str = "SKIFF_INBOUND";
/// The chain for connections the pod's processes open.
pub(crate) const OUTBOUND_CHAIN: &str = "SKIFF_OUTBOUND";

/// A network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`; a
/// bare address is the network of that address alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub(crate) address: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` or a bare address; `None` if it is neither.
    pub(crate) fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        Cidr::parse(s).ok_or_else(|| format!("`{s}` is not a CIDR (address/prefix length)"))
    }
}

/// What to capture and what to leave alone.
#[derive(Debug, Clone)]
pub struct Rules {
    /// skiff's uid: its own connections are never captured.
    pub proxy_uid: u32,
    /// Where inbound connections are redirected.
    pub inbound_port: u16,
    /// Where outbound connections are redirected.
    pub outbound_port: u16,
    /// skiff's admin port: never captured inbound.
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Capture inbound connections at all.
    pub inbound: bool,
    /// Also write the IPv6 rules (with `ip6tables`).
    pub ipv6: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            proxy_uid: PROXY_UID,
            inbound_port: INBOUND_PORT,
            outbound_port: OUTBOUND_PORT,
            admin_port: ADMIN_PORT,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            inbound: true,
            ipv6: true,
        }
    }
}

/// One iptables invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub(crate) program: &'static str,
    pub(crate) args: Vec<String>,
    /// Removing what may not exist: failing is fine.
    pub(crate) may_fail: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            if a.contains(|c: char| c.is_whitespace() || c == '"') {
                write!(f, " '{a}'")?;
            } else {
                write!(f, " {a}")?;
            }
        }
        if self.may_fail {
            write!(f, " 2>/dev/null || true")?;
        }
        Ok(())
    }
}

/// Why applying or removing failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run `{step}`: {source} (is iptables installed?)")]
    Spawn {
        step: String,
        source: std::io::Error,
    },
    #[error("`{step}` failed: {stderr}")]
    Failed { step: String, stderr: String },
}

const PROGRAMS: [(&str, bool); 2] = [("iptables", false), ("ip6tables", true)];

fn step(program: &'static str, may_fail: bool, args: &[&str]) -> Step {
    Step {
        program,
        args: args.iter().map(|s| s.to_string()).collect(),
        may_fail,
    }
}

/// The jumps from the built-in chains to skiff's.
fn jumps() -> [(&'static str, &'static str); 2] {
    [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)]
}

/// The steps that remove skiff's rules; each may find nothing to remove.
pub fn remove_steps(rules: &Rules) -> Vec<Step> {
    let mut steps = Vec::new();
    for (program, v6) in PROGRAMS {
        if v6 && !rules.ipv6 {
            continue;
        }
        for (from, chain) in jumps() {
            steps.push(step(
                program,
                true,
                &["-t", "nat", "-D", from, "-p", "tcp", "-j", chain],
            ));
        }
        for (_, chain) in jumps() {
            steps.push(step(program, true, &["-t", "nat", "-F", chain]));
            steps.push(step(program, true, &["-t", "nat", "-X", chain]));
        }
    }
    steps
}

/// The steps that apply the rules from scratch (after [`remove_steps`]).
pub fn apply_steps(rules: &Rules) -> Vec<Step> {
    let mut steps = remove_steps(rules);
    for (program, v6) in PROGRAMS {
        if v6 && !rules.ipv6 {
            continue;
        }
        let loopback = if v6 { "::1/128" } else { "127.0.0.0/8" };
        let add = |chain: &str, rule: &[&str], target: &[&str]| {
            let mut args = vec!["-t", "nat", "-A", chain];
            args.extend_from_slice(rule);
            args.extend_from_slice(target);
            step(program, false, &args)
        };
        let ret = ["-j", "RETURN"];
        let mut s = Vec::new();
        for (_, chain) in jumps() {
            s.push(step(program, false, &["-t", "nat", "-N", chain]));
        }

        // Inbound: everything but the admin port and the skipped ports.
        if rules.inbound {
            let admin = rules.admin_port.to_string();
            s.push(add(INBOUND_CHAIN, &["-p", "tcp", "--dport", &admin], &ret));
            for port in &rules.skip_inbound_ports {
                s.push(add(
                    INBOUND_CHAIN,
                    &["-p", "tcp", "--dport", &port.to_string()],
                    &ret,
                ));
            }
            let to = rules.inbound_port.to_string();
            s.push(add(
                INBOUND_CHAIN,
                &["-p", "tcp"],
                &["-j", "REDIRECT", "--to-ports", &to],
            ));
        }

        // Outbound: never skiff's own connections (no loop), never loopback.
        let uid = rules.proxy_uid.to_string();
        s.push(add(
            OUTBOUND_CHAIN,
            &["-m", "owner", "--uid-owner", &uid],
            &ret,
        ));
        s.push(add(OUTBOUND_CHAIN, &["-o", "lo"], &ret));
        s.push(add(OUTBOUND_CHAIN, &["-d", loopback], &ret));
        for port in &rules.skip_outbound_ports {
            s.push(add(
                OUTBOUND_CHAIN,
                &["-p", "tcp", "--dport", &port.to_string()],
                &ret,
            ));
        }
        for cidr in rules
            .skip_outbound_cidrs
            .iter()
            .filter(|c| c.address.is_ipv6() == v6)
        {
            s.push(add(OUTBOUND_CHAIN, &["-d", &cidr.to_string()], &ret));
        }
        let to = rules.outbound_port.to_string();
        s.push(add(
            OUTBOUND_CHAIN,
            &["-p", "tcp"],
            &["-j", "REDIRECT", "--to-ports", &to],
        ));

        for (from, chain) in jumps() {
            s.push(step(
                program,
                false,
                &["-t", "nat", "-A", from, "-p", "tcp", "-j", chain],
            ));
        }
        steps.extend(s);
    }
    steps
}

/// Runs the steps in order; stops at the first failure that matters.
pub fn run(steps: &[Step]) -> Result<(), IptablesError> {
    for s in steps {
        let output = Command::new(s.program)
            .args(&s.args)
            .output()
            .map_err(|source| IptablesError::Spawn {
                step: s.to_string(),
                source,
            });
        let output = match output {
            Ok(o) => o,
            Err(_) if s.may_fail => continue,
            Err(e) => return Err(e),
        };
        if !output.status.success() && !s.may_fail {
            return Err(IptablesError::Failed {
                step: s.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Whether this host has IPv6: its loopback has `::1` (no `ip6tables`
/// rules, and no IPv6 listeners, without it).
pub fn host_has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| {
        t.lines()
            .any(|l| l.starts_with("00000000000000000000000000000001"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::to_string).collect()
    }

    #[test]
    fn outbound_rules_return_for_skiffs_uid_before_redirecting() {
        let rules = Rules {
            ipv6: false,
            skip_outbound_ports: vec![5432],
            skip_outbound_cidrs: vec![
                Cidr::parse("10.96.0.0/12").unwrap(),
                Cidr::parse("fd00::/8").unwrap(),
            ],
            skip_inbound_ports: vec![22],
            ..Rules::default()
        };
        let all = text(&apply_steps(&rules));
        let applied: Vec<&String> = all.iter().filter(|s| !s.ends_with("|| true")).collect();
        let position = |needle: &str| {
            applied
                .iter()
                .position(|s| s.contains(needle))
                .unwrap_or_else(|| panic!("no `{needle}` in {applied:#?}"))
        };
        assert!(
            position("--uid-owner 2102 -j RETURN")
                < position("-A SKIFF_OUTBOUND -p tcp -j REDIRECT --to-ports 4140")
        );
        assert!(
            position("-A SKIFF_OUTBOUND -d 10.96.0.0/12 -j RETURN")
                < position("REDIRECT --to-ports 4140")
        );
        assert!(position("--dport 5432 -j RETURN") < position("REDIRECT --to-ports 4140"));
        assert!(
            position("-A SKIFF_INBOUND -p tcp --dport 9901 -j RETURN")
                < position("REDIRECT --to-ports 4143")
        );
        assert!(
            position("-A SKIFF_INBOUND -p tcp --dport 22 -j RETURN")
                < position("REDIRECT --to-ports 4143")
        );
        assert!(!all
            .iter()
            .any(|s| s.contains("fd00") || s.starts_with("ip6tables")));
        // The jumps come last, once the chains are complete.
        assert!(applied
            .last()
            .unwrap()
            .contains("-A OUTPUT -p tcp -j SKIFF_OUTBOUND"));
    }

    #[test]
    fn applying_begins_by_removing_so_twice_equals_once() {
        let rules = Rules::default();
        let apply = apply_steps(&rules);
        let remove = remove_steps(&rules);
        assert_eq!(&apply[..remove.len()], &remove[..]);
        assert!(remove.iter().all(|s| s.may_fail));
        assert!(apply[remove.len()..].iter().all(|s| !s.may_fail));
        assert!(apply
            .iter()
            .any(|s| s.program == "ip6tables" && s.to_string().contains("::1/128")));
    }

    #[test]
    fn cidrs_parse_with_or_without_a_prefix() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("198.18.0.1").unwrap().to_string(),
            "198.18.0.1/32"
        );
        assert_eq!(Cidr::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("ten/8").is_none());
    }
}
