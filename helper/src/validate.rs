//! The rules every argument must pass before the helper makes a single syscall.
//!
//! This module owns the naming rules for banger's host resources and the shape of its subnet.
//! It is pure: no IO. The server applies these checks to every request before it touches the
//! host; the client applies the same checks so a bad name fails fast with the same message.
//!
//! Invariants:
//! - A name that passes is at most 15 bytes (IFNAMSIZ - 1), ASCII, and cannot be confused with
//!   an interface banger does not own: taps are `bt<hex>`, bridges are `banger<[a-z0-9]*>`.
//! - A network that passes is an RFC 1918 subnet of /16../30 whose gateway is a usable host
//!   address, so the NAT rules built from it can only ever cover private addresses.

use std::net::Ipv4Addr;

use crate::protocol::{DNS_PORT, NetworkSpec, Request};

/// Prefix every banger tap name starts with.
pub const TAP_PREFIX: &str = "bt";
/// Prefix every banger bridge name starts with.
pub const BRIDGE_PREFIX: &str = "banger";

/// An argument broke a rule. The message names the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// `bt` followed by 1 to 13 lowercase hex digits.
pub fn tap_name(name: &str) -> Result<(), Invalid> {
    let ok = name.strip_prefix(TAP_PREFIX).is_some_and(|rest| {
        (1..=13).contains(&rest.len())
            && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{name:?} is not a banger tap name: a tap name is \"bt\" followed by 1 to 13 lowercase hex digits (for example \"bt1f\")."
        )))
    }
}

/// Whether `name` is a banger tap name (used to pick banger's taps out of all interfaces).
pub fn is_tap_name(name: &str) -> bool {
    tap_name(name).is_ok()
}

/// `banger` followed by 0 to 9 characters of `[a-z0-9]`.
pub fn bridge_name(name: &str) -> Result<(), Invalid> {
    let ok = name.strip_prefix(BRIDGE_PREFIX).is_some_and(|rest| {
        rest.len() <= 9 && rest.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9'))
    });
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{name:?} is not a banger bridge name: a bridge name is \"banger\" followed by at most 9 characters of [a-z0-9] (for example \"banger0\")."
        )))
    }
}

/// A validated IPv4 subnet: the network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Checks the whole spec and returns the subnet it describes.
pub fn network_spec(spec: &NetworkSpec) -> Result<Subnet, Invalid> {
    bridge_name(&spec.bridge)?;
    let gateway = spec.gateway;
    if !(16..=30).contains(&spec.prefix_len) {
        return Err(Invalid(format!(
            "prefix length {} is not allowed: banger's subnet must be between /16 and /30.",
            spec.prefix_len
        )));
    }
    // With a prefix of at least 16 bits the whole subnet lies inside the private block that
    // holds the gateway, so checking the gateway is enough to keep NAT on private space.
    if !gateway.is_private() {
        return Err(Invalid(format!(
            "{gateway} is not a private address: the gateway must be in 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918)."
        )));
    }
    let mask = u32::MAX << (32 - u32::from(spec.prefix_len));
    let network = u32::from(gateway) & mask;
    let broadcast = network | !mask;
    let subnet = Subnet {
        network: Ipv4Addr::from(network),
        prefix_len: spec.prefix_len,
    };
    if u32::from(gateway) == network || u32::from(gateway) == broadcast {
        return Err(Invalid(format!(
            "{gateway} cannot be the gateway of {subnet}: it is the subnet's network or broadcast address; pick a host address such as {}.",
            Ipv4Addr::from(network + 1)
        )));
    }
    Ok(subnet)
}

/// The address a DNS request names: a private IPv4 address, like the gateway of every
/// network spec that passes. Whether the bridge carries it is the host's to check
/// ([`crate::net::Host::bind_dns`]).
pub fn dns_address(address: Ipv4Addr) -> Result<(), Invalid> {
    if address.is_private() {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{address} is not a private address: banger's DNS server listens only on its bridge's address, which is in 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918)."
        )))
    }
}

/// The port a DNS socket binds: [`DNS_PORT`] and nothing else, so that the request cannot
/// be used to take another privileged port.
pub fn dns_port(port: u16) -> Result<(), Invalid> {
    if port == DNS_PORT {
        Ok(())
    } else {
        Err(Invalid(format!(
            "port {port} is not allowed: banger-helper binds only the DNS port {DNS_PORT}."
        )))
    }
}

/// The longest VM id [`vm_id`] accepts: the jail's id is `UID-VM`, and the jailer takes ids
/// of at most 64 characters.
pub const MAX_VM_ID: usize = 48;

/// A VM's id as the jail requests name it: 1 to [`MAX_VM_ID`] lowercase letters, digits and
/// `-` (what Firecracker's `--id` allows, and what can never climb out of a directory).
pub fn vm_id(id: &str) -> Result<(), Invalid> {
    if !id.is_empty()
        && id.len() <= MAX_VM_ID
        && id
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        Ok(())
    } else {
        Err(Invalid(format!(
            "VM id {id:?} is not valid: use 1 to {MAX_VM_ID} lowercase letters, digits and '-'."
        )))
    }
}

/// Every argument of every request, checked before the host is touched.
pub fn request(request: &Request) -> Result<(), Invalid> {
    match request {
        Request::Version
        | Request::ListTaps
        | Request::Networks
        | Request::Jail
        | Request::OpenKvm => Ok(()),
        Request::EnsureNetwork { spec } => network_spec(spec).map(|_| ()),
        Request::EnsureTap { tap, bridge } => {
            tap_name(tap)?;
            bridge_name(bridge)
        }
        Request::DeleteTap { tap } | Request::OpenTap { tap } => tap_name(tap),
        Request::RemoveNetwork { bridge } => bridge_name(bridge),
        Request::BindDns {
            bridge,
            address,
            port,
        } => {
            bridge_name(bridge)?;
            dns_address(*address)?;
            dns_port(*port)
        }
        Request::RouteDns { bridge, address } => {
            bridge_name(bridge)?;
            dns_address(*address)
        }
        Request::LaunchFirecracker { vm } | Request::RemoveJail { vm } => vm_id(vm),
        Request::KillVmm {
            vm,
            pid,
            start_time_ticks: _,
        } => {
            vm_id(vm)?;
            // 0 is no process, and pids above i32::MAX do not exist (kill() takes an i32,
            // where a negative pid names a whole process group).
            if *pid == 0 || *pid > i32::MAX as u32 {
                return Err(Invalid(format!("pid {pid} is not a process id.")));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        for good in ["bt0", "bt1", "bt0123456789abc", "btdeadbeef"] {
            assert_eq!(tap_name(good), Ok(()), "{good}");
            assert!(good.len() <= 15);
        }
        for bad in [
            "",
            "bt",
            "eth0",
            "bt../x",
            "bt0123456789abcd",
            "BT1",
            "btA",
            "bt1\0",
            "bt 1",
            "xbt1",
            "bt1/",
            "btg",
            "bt-1",
            "bt1\n",
            "bté",
        ] {
            let err = tap_name(bad).unwrap_err();
            assert!(
                err.0.contains(&format!("{bad:?}")),
                "message names the value: {err}"
            );
            assert!(
                err.0.contains("lowercase hex"),
                "message names the rule: {err}"
            );
        }
    }

    #[test]
    fn bridge_names() {
        for good in ["banger", "banger0", "banger123456789", "bangerabc"] {
            assert_eq!(bridge_name(good), Ok(()), "{good}");
            assert!(good.len() <= 15);
        }
        for bad in [
            "",
            "br0",
            "banger1234567890",
            "Banger0",
            "bangerA",
            "banger-0",
            "banger0\0",
            "banger/x",
            "docker0",
        ] {
            let err = bridge_name(bad).unwrap_err();
            assert!(err.0.contains("[a-z0-9]"), "{err}");
        }
    }

    #[test]
    fn dns_requests_name_banger_s_bridge_a_private_address_and_port_53() {
        let bind = |bridge: &str, address: [u8; 4], port: u16| {
            request(&Request::BindDns {
                bridge: bridge.into(),
                address: address.into(),
                port,
            })
        };
        assert_eq!(bind("banger0", [172, 30, 0, 1], 53), Ok(()));
        for (bridge, address, port, rule) in [
            ("banger0", [172, 30, 0, 1], 54, "only the DNS port 53"),
            ("banger0", [172, 30, 0, 1], 0, "only the DNS port 53"),
            ("banger0", [172, 30, 0, 1], 22, "only the DNS port 53"),
            ("banger0", [8, 8, 8, 8], 53, "not a private address"),
            ("banger0", [127, 0, 0, 53], 53, "not a private address"),
            ("banger0", [0, 0, 0, 0], 53, "not a private address"),
            ("eth0", [172, 30, 0, 1], 53, "[a-z0-9]"),
        ] {
            let error = bind(bridge, address, port).unwrap_err();
            assert!(
                error.0.contains(rule),
                "{bridge} {address:?} {port}: {error}"
            );
        }
        let route = |bridge: &str, address: [u8; 4]| {
            request(&Request::RouteDns {
                bridge: bridge.into(),
                address: address.into(),
            })
        };
        assert_eq!(route("banger0", [10, 0, 0, 1]), Ok(()));
        assert!(route("banger0", [1, 1, 1, 1]).is_err());
        assert!(route("lo", [10, 0, 0, 1]).is_err());
    }

    fn spec(gateway: [u8; 4], prefix_len: u8) -> NetworkSpec {
        NetworkSpec {
            bridge: "banger0".into(),
            gateway: Ipv4Addr::from(gateway),
            prefix_len,
        }
    }

    #[test]
    fn network_specs() {
        assert_eq!(
            network_spec(&spec([172, 30, 0, 1], 24)),
            Ok(Subnet {
                network: Ipv4Addr::new(172, 30, 0, 0),
                prefix_len: 24
            })
        );
        assert_eq!(
            network_spec(&spec([10, 1, 2, 3], 16)).unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            network_spec(&spec([192, 168, 7, 6], 30))
                .unwrap()
                .to_string(),
            "192.168.7.4/30"
        );
        assert!(network_spec(&spec([192, 168, 7, 5], 30)).is_ok());
    }

    #[test]
    fn bad_network_specs() {
        let cases = [
            (spec([8, 8, 8, 1], 24), "private"),
            (spec([172, 32, 0, 1], 24), "private"),
            (spec([100, 64, 0, 1], 24), "private"),
            (spec([127, 0, 0, 1], 24), "private"),
            (spec([10, 0, 0, 1], 15), "/16 and /30"),
            (spec([10, 0, 0, 1], 31), "/16 and /30"),
            (spec([10, 0, 0, 1], 0), "/16 and /30"),
            (spec([10, 0, 0, 0], 24), "network or broadcast"),
            (spec([10, 0, 0, 255], 24), "network or broadcast"),
            (spec([192, 168, 7, 7], 30), "network or broadcast"),
        ];
        for (spec, rule) in cases {
            let err = network_spec(&spec).unwrap_err();
            assert!(err.0.contains(rule), "{spec:?}: {err}");
        }
        let mut bad_bridge = spec([10, 0, 0, 1], 24);
        bad_bridge.bridge = "eth0".into();
        assert!(
            network_spec(&bad_bridge)
                .unwrap_err()
                .0
                .contains("\"eth0\"")
        );
    }
}
