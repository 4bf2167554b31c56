//! `lava-network` data: a node's addresses as the key/value pairs LAVA used
//! (`ipv4`, `netmask`, `broadcast`, `ipv6`, `mac`, `hostname`, `hostname-full`,
//! `default-gateway`, `dns_1` ...), so marker-protocol nodes and gRPC nodes interoperate.

use proto::v1::NetworkInfo;

use crate::Data;

/// The keys, as LAVA's `lava-network` writes them.
pub const HOSTNAME: &str = "hostname";
pub const HOSTNAME_FULL: &str = "hostname-full";
pub const IPV4: &str = "ipv4";
pub const NETMASK: &str = "netmask";
pub const BROADCAST: &str = "broadcast";
pub const IPV6: &str = "ipv6";
pub const MAC: &str = "mac";
pub const DEFAULT_GATEWAY: &str = "default-gateway";

/// The key of the `n`th name server, from 1: `dns_1`, `dns_2`, ...
pub fn dns_key(n: usize) -> String {
    format!("dns_{n}")
}

pub fn to_data(info: &NetworkInfo) -> Data {
    let mut data = Data::new();
    let mut put = |key: &str, value: &str| {
        if !value.is_empty() {
            data.insert(key.to_string(), value.to_string());
        }
    };
    put(HOSTNAME, &info.hostname);
    put(HOSTNAME_FULL, &info.hostname_full);
    put(IPV4, &info.ipv4);
    put(NETMASK, &info.netmask);
    put(BROADCAST, &info.broadcast);
    put(IPV6, &info.ipv6);
    put(MAC, &info.mac);
    put(DEFAULT_GATEWAY, &info.default_gateway);
    for (i, dns) in info.dns.iter().enumerate() {
        put(&dns_key(i + 1), dns);
    }
    data
}

pub fn from_data(data: &Data) -> NetworkInfo {
    let get = |key: &str| data.get(key).cloned().unwrap_or_default();
    NetworkInfo {
        hostname: get(HOSTNAME),
        hostname_full: get(HOSTNAME_FULL),
        ipv4: get(IPV4),
        netmask: get(NETMASK),
        broadcast: get(BROADCAST),
        ipv6: get(IPV6),
        mac: get(MAC),
        default_gateway: get(DEFAULT_GATEWAY),
        dns: (1..)
            .map_while(|i| data.get(&dns_key(i)).cloned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_info_round_trips_through_lavas_keys() {
        let info = NetworkInfo {
            hostname: "server".into(),
            ipv4: "10.0.0.2".into(),
            dns: vec!["10.0.0.1".into(), "9.9.9.9".into()],
            ..Default::default()
        };
        let data = to_data(&info);
        assert_eq!(data.get("dns_2").map(String::as_str), Some("9.9.9.9"));
        assert!(!data.contains_key("mac"));
        assert_eq!(from_data(&data), info);
    }
}
