//! `lava-network` data: a node's addresses as the key/value pairs LAVA used
//! (`ipv4`, `netmask`, `broadcast`, `ipv6`, `mac`, `hostname`, `hostname-full`,
//! `default-gateway`, `dns_1` ...), so marker-protocol nodes and gRPC nodes interoperate.

use proto::v1::NetworkInfo;

use crate::group::Data;

pub fn to_data(info: &NetworkInfo) -> Data {
    let mut data = Data::new();
    let mut put = |key: &str, value: &str| {
        if !value.is_empty() {
            data.insert(key.to_string(), value.to_string());
        }
    };
    put("hostname", &info.hostname);
    put("hostname-full", &info.hostname_full);
    put("ipv4", &info.ipv4);
    put("netmask", &info.netmask);
    put("broadcast", &info.broadcast);
    put("ipv6", &info.ipv6);
    put("mac", &info.mac);
    put("default-gateway", &info.default_gateway);
    for (i, dns) in info.dns.iter().enumerate() {
        put(&format!("dns_{}", i + 1), dns);
    }
    data
}

pub fn from_data(data: &Data) -> NetworkInfo {
    let get = |key: &str| data.get(key).cloned().unwrap_or_default();
    NetworkInfo {
        hostname: get("hostname"),
        hostname_full: get("hostname-full"),
        ipv4: get("ipv4"),
        netmask: get("netmask"),
        broadcast: get("broadcast"),
        ipv6: get("ipv6"),
        mac: get("mac"),
        default_gateway: get("default-gateway"),
        dns: (1..)
            .map_while(|i| data.get(&format!("dns_{i}")).cloned())
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
