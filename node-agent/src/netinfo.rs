//! What `lava-network broadcast` tells the group about this node.

use nix::ifaddrs::getifaddrs;
use proto::v1::NetworkInfo;

use crate::transport::Failure;

/// The addresses of `iface`, the host name, default gateway and DNS servers.
pub fn gather(iface: &str) -> Result<NetworkInfo, Failure> {
    let mut info = NetworkInfo::default();
    let mut seen = false;
    let addrs = getifaddrs()
        .map_err(|e| Failure::Infrastructure(format!("cannot list interfaces: {e}")))?;
    for ifa in addrs.filter(|a| a.interface_name == iface) {
        seen = true;
        let Some(address) = ifa.address else { continue };
        if let Some(v4) = address.as_sockaddr_in() {
            if info.ipv4.is_empty() {
                info.ipv4 = v4.ip().to_string();
                if let Some(mask) = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in()) {
                    info.netmask = mask.ip().to_string();
                }
                if let Some(bcast) = ifa.broadcast.as_ref().and_then(|b| b.as_sockaddr_in()) {
                    info.broadcast = bcast.ip().to_string();
                }
            }
        } else if let Some(v6) = address.as_sockaddr_in6() {
            if info.ipv6.is_empty() {
                info.ipv6 = v6.ip().to_string();
            }
        } else if let Some(link) = address.as_link_addr()
            && let Some(mac) = link.addr()
        {
            info.mac = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
        }
    }
    if !seen {
        return Err(Failure::Usage(format!("no network interface {iface:?}")));
    }
    info.hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    info.hostname_full = info.hostname.clone();
    info.default_gateway =
        default_gateway(&std::fs::read_to_string("/proc/net/route").unwrap_or_default());
    info.dns = nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    Ok(info)
}

/// The gateway of the default route in `/proc/net/route` (hex, little-endian).
fn default_gateway(route: &str) -> String {
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(1) == Some(&"00000000"))
                .then(|| cols.get(2).copied())
                .flatten()
        })
        .find_map(|hex| u32::from_str_radix(hex, 16).ok())
        .map(|g| std::net::Ipv4Addr::from(g.to_le_bytes()).to_string())
        .unwrap_or_default()
}

fn nameservers(resolv: &str) -> Vec<String> {
    resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_gateway_and_dns() {
        let route = "Iface\tDestination\tGateway \tFlags\nens3\t00000000\t0202000A\t0003\nens3\t0002000A\t00000000\t0001\n";
        assert_eq!(default_gateway(route), "10.0.2.2");
        assert_eq!(
            nameservers("# x\nnameserver 10.0.2.3\nsearch lan\nnameserver ::1\n"),
            ["10.0.2.3", "::1"]
        );
    }

    #[test]
    fn loopback_has_an_address_and_unknown_interfaces_are_errors() {
        let lo = gather("lo").unwrap();
        assert_eq!(lo.ipv4, "127.0.0.1");
        assert!(matches!(gather("no-such-if0"), Err(Failure::Usage(_))));
    }
}
