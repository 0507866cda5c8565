//! Which network each allowed user may have: the helper's own configuration, given by root on
//! its command line (`--network UID:BRIDGE:GATEWAY/PREFIX`), never by a request.
//!
//! A request can only ask for what it was given here: `ensure_network` must name exactly one
//! of the caller's networks, and every request that names a bridge (a tap's, the DNS
//! server's, a removal) must name one of the caller's bridges. Invariants, checked once at
//! startup so that a helper that runs is a helper whose configuration is sound:
//!
//! - every network passes [`crate::validate::network_spec`] (a banger bridge name, an RFC 1918
//!   subnet of /16../30);
//! - a bridge belongs to exactly one user, and no two networks' subnets overlap, so one
//!   user's NAT rules or routes can never cover another's guests;
//! - an allowed uid without a `--network` gets [`default_network`], which is what bangerd
//!   asks for out of the box; two such uids would share it, so that is refused and each must
//!   be given its own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::protocol::NetworkSpec;
use crate::validate::{self, Subnet};

/// The network bangerd uses unless configured otherwise: bridge `banger0`, gateway
/// 172.30.0.1/24.
pub fn default_network() -> NetworkSpec {
    NetworkSpec {
        bridge: "banger0".to_owned(),
        gateway: Ipv4Addr::new(172, 30, 0, 1),
        prefix_len: 24,
    }
}

/// One configured network and the user it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub uid: u32,
    pub spec: NetworkSpec,
    pub subnet: Subnet,
}

/// Every configured network, by owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks {
    assigned: Vec<Assigned>,
}

/// Parses one `--network UID:BRIDGE:GATEWAY/PREFIX` value (shape only; [`Networks::new`]
/// checks the rules).
pub fn parse_flag(value: &str) -> Result<(u32, NetworkSpec), String> {
    let shape = || {
        format!(
            "{value:?} is not a network: write UID:BRIDGE:GATEWAY/PREFIX, for example 1000:banger0:172.30.0.1/24"
        )
    };
    let mut parts = value.splitn(3, ':');
    let (Some(uid), Some(bridge), Some(address)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(shape());
    };
    let uid: u32 = uid.parse().map_err(|_| shape())?;
    let (gateway, prefix_len) = address.split_once('/').ok_or_else(shape)?;
    let gateway: Ipv4Addr = gateway.parse().map_err(|_| shape())?;
    let prefix_len: u8 = prefix_len.parse().map_err(|_| shape())?;
    Ok((
        uid,
        NetworkSpec {
            bridge: bridge.to_owned(),
            gateway,
            prefix_len,
        },
    ))
}

impl Networks {
    /// The networks of `allowed` users: the explicit ones, and [`default_network`] for an
    /// allowed uid that has none. Refuses a network for a uid that is not allowed, an invalid
    /// network, a bridge given twice, and overlapping subnets, each naming what to change.
    pub fn new(allowed: &[u32], explicit: &[(u32, NetworkSpec)]) -> Result<Networks, String> {
        let mut assigned = Vec::new();
        for (uid, spec) in explicit {
            if !allowed.contains(uid) {
                return Err(format!(
                    "--network gives {} to uid {uid}, which is not allowed; add `--allow-uid {uid}` or drop that network",
                    spec.bridge
                ));
            }
            let subnet = validate::network_spec(spec).map_err(|e| format!("--network: {e}"))?;
            assigned.push(Assigned {
                uid: *uid,
                spec: spec.clone(),
                subnet,
            });
        }
        let mut defaulted: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|uid| !explicit.iter().any(|(u, _)| u == uid))
            .collect();
        defaulted.sort_unstable();
        defaulted.dedup();
        if defaulted.len() > 1 {
            return Err(format!(
                "uids {} would all get the default network ({}); give each its own with --network UID:BRIDGE:GATEWAY/PREFIX (for example --network {}:banger1:172.31.0.1/24)",
                defaulted
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                describe(&default_network()),
                defaulted[1]
            ));
        }
        for uid in defaulted {
            let spec = default_network();
            let subnet = validate::network_spec(&spec).expect("the default network is valid");
            assigned.push(Assigned { uid, spec, subnet });
        }
        for (i, a) in assigned.iter().enumerate() {
            for b in &assigned[..i] {
                if a.spec.bridge == b.spec.bridge {
                    return Err(format!(
                        "bridge {} is given twice (uids {} and {}); each network needs a bridge of its own",
                        a.spec.bridge, b.uid, a.uid
                    ));
                }
                if overlap(a.subnet, b.subnet) {
                    return Err(format!(
                        "the subnets of {} ({}, uid {}) and {} ({}, uid {}) overlap; give each network a subnet of its own",
                        b.spec.bridge, b.subnet, b.uid, a.spec.bridge, a.subnet, a.uid
                    ));
                }
            }
        }
        Ok(Networks { assigned })
    }

    /// Every configured network.
    pub fn all(&self) -> &[Assigned] {
        &self.assigned
    }

    /// The networks `uid` may use, in configuration order.
    pub fn of(&self, uid: u32) -> Vec<NetworkSpec> {
        self.assigned
            .iter()
            .filter(|a| a.uid == uid)
            .map(|a| a.spec.clone())
            .collect()
    }

    /// `spec` is exactly one of `uid`'s networks: the error names what it may use.
    pub fn check_spec(&self, uid: u32, spec: &NetworkSpec) -> Result<(), String> {
        if self
            .assigned
            .iter()
            .any(|a| a.uid == uid && a.spec == *spec)
        {
            return Ok(());
        }
        Err(format!(
            "uid {uid} may not have network {}: {}",
            describe(spec),
            self.what_uid_may_use(uid)
        ))
    }

    /// `bridge` is one of `uid`'s bridges.
    pub fn check_bridge(&self, uid: u32, bridge: &str) -> Result<(), String> {
        if self
            .assigned
            .iter()
            .any(|a| a.uid == uid && a.spec.bridge == bridge)
        {
            return Ok(());
        }
        Err(format!(
            "bridge {bridge} is not uid {uid}'s: {}",
            self.what_uid_may_use(uid)
        ))
    }

    fn what_uid_may_use(&self, uid: u32) -> String {
        let mine: Vec<String> = self.of(uid).iter().map(describe).collect();
        if mine.is_empty() {
            format!("banger-helper gives uid {uid} no network")
        } else {
            format!(
                "banger-helper's configuration gives it {} (set network.bridge in bangerd's config.toml to match, or ask root to change banger-helper's --network)",
                mine.join(", ")
            )
        }
    }
}

/// `banger0 (172.30.0.1/24)`.
pub fn describe(spec: &NetworkSpec) -> String {
    format!("{} ({}/{})", spec.bridge, spec.gateway, spec.prefix_len)
}

fn overlap(a: Subnet, b: Subnet) -> bool {
    let shorter = a.prefix_len.min(b.prefix_len);
    let mask = u32::MAX << (32 - u32::from(shorter));
    u32::from(a.network) & mask == u32::from(b.network) & mask
}

/// The configured networks as a map from bridge to owner, for logs.
pub fn owners(networks: &Networks) -> BTreeMap<String, u32> {
    networks
        .all()
        .iter()
        .map(|a| (a.spec.bridge.clone(), a.uid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, gateway: [u8; 4], prefix_len: u8) -> NetworkSpec {
        NetworkSpec {
            bridge: bridge.to_owned(),
            gateway: Ipv4Addr::from(gateway),
            prefix_len,
        }
    }

    #[test]
    fn flags_parse_and_bad_shapes_say_how_to_write_one() {
        assert_eq!(
            parse_flag("1000:banger1:10.9.0.1/24"),
            Ok((1000, net("banger1", [10, 9, 0, 1], 24)))
        );
        for bad in [
            "",
            "1000",
            "1000:banger1",
            "x:banger1:10.9.0.1/24",
            "1000:banger1:10.9.0.1",
            "1000:banger1:10.9.0/24",
            "1000:banger1:10.9.0.1/x",
        ] {
            let error = parse_flag(bad).unwrap_err();
            assert!(
                error.contains("UID:BRIDGE:GATEWAY/PREFIX"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn one_allowed_user_gets_the_default_and_two_must_be_told_apart() {
        let one = Networks::new(&[1000], &[]).unwrap();
        assert_eq!(one.of(1000), [default_network()]);
        assert!(one.of(1001).is_empty());
        let error = Networks::new(&[1000, 1001], &[]).unwrap_err();
        assert!(
            error.contains("1000, 1001") && error.contains("--network"),
            "{error}"
        );
        let two =
            Networks::new(&[1000, 1001], &[(1001, net("banger1", [10, 9, 0, 1], 24))]).unwrap();
        assert_eq!(two.of(1000), [default_network()]);
        assert_eq!(two.of(1001), [net("banger1", [10, 9, 0, 1], 24)]);
    }

    #[test]
    fn shared_bridges_overlapping_subnets_and_strangers_are_refused() {
        let error = Networks::new(
            &[1, 2],
            &[
                (1, net("banger1", [10, 1, 0, 1], 24)),
                (2, net("banger1", [10, 2, 0, 1], 24)),
            ],
        )
        .unwrap_err();
        assert!(error.contains("given twice"), "{error}");
        let error = Networks::new(
            &[1, 2],
            &[
                (1, net("banger1", [10, 1, 0, 1], 16)),
                (2, net("banger2", [10, 1, 200, 1], 24)),
            ],
        )
        .unwrap_err();
        assert!(error.contains("overlap"), "{error}");
        // The default network overlaps an explicit one just as well.
        let error =
            Networks::new(&[1, 2], &[(2, net("banger2", [172, 30, 0, 129], 25))]).unwrap_err();
        assert!(error.contains("overlap"), "{error}");
        let error = Networks::new(&[1], &[(7, net("banger7", [10, 7, 0, 1], 24))]).unwrap_err();
        assert!(error.contains("--allow-uid 7"), "{error}");
        let error = Networks::new(&[1], &[(1, net("banger1", [8, 8, 8, 1], 24))]).unwrap_err();
        assert!(error.contains("private"), "{error}");
    }

    #[test]
    fn a_caller_may_ask_only_for_what_it_was_given() {
        let networks = Networks::new(&[1, 2], &[(2, net("banger2", [10, 2, 0, 1], 24))]).unwrap();
        assert_eq!(networks.check_spec(1, &default_network()), Ok(()));
        assert_eq!(networks.check_bridge(1, "banger0"), Ok(()));
        // Another's network, a subnet of one's own bridge changed, a bridge never given.
        let error = networks
            .check_spec(1, &net("banger2", [10, 2, 0, 1], 24))
            .unwrap_err();
        assert!(error.contains("banger0 (172.30.0.1/24)"), "{error}");
        assert!(
            networks
                .check_spec(1, &net("banger0", [10, 99, 0, 1], 16))
                .is_err()
        );
        assert!(networks.check_bridge(1, "banger2").is_err());
        assert!(networks.check_bridge(2, "banger0").is_err());
        assert!(
            networks
                .check_bridge(3, "banger0")
                .unwrap_err()
                .contains("no network")
        );
    }
}
