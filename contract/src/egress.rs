//! The outbound-request policy: which addresses a request made on a tenant's behalf may reach
//! (HTTP tools, webhooks, provider endpoints, Wyoming hosts, transfer and carrier API bases).
//! One policy, applied by the engine, the API and the dialler: after resolving a name, to
//! every address, and before connecting; and when a document is written, to a URL whose host
//! is an address literal.
//!
//! Refused unless an operator allows the range (`--allow-private-egress CIDR`): loopback,
//! private (RFC 1918, IPv6 unique local), link-local (169.254.0.0/16 with the cloud metadata
//! address, fe80::/10), shared address space (CGNAT, 100.64.0.0/10), multicast, unspecified
//! and "this network", broadcast, reserved (240.0.0.0/4), IETF protocol assignments
//! (192.0.0.0/24), benchmarking (198.18.0.0/15) and documentation ranges. IPv4 addresses
//! embedded in IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
//! judged as the IPv4 address they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    #[error("a loopback address")]
    Loopback,
    #[error("a private address")]
    Private,
    #[error("a link-local address")]
    LinkLocal,
    #[error("a shared (carrier-grade NAT) address")]
    SharedNat,
    #[error("a multicast address")]
    Multicast,
    #[error("an unspecified address")]
    Unspecified,
    #[error("a reserved or special-purpose address")]
    Reserved,
}

/// Which special ranges an operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed: Vec<IpNet>,
}

impl EgressPolicy {
    /// The default: only public addresses.
    pub fn public_only() -> EgressPolicy {
        EgressPolicy::default()
    }

    /// Public addresses and these ranges.
    pub fn allowing(allowed: Vec<IpNet>) -> EgressPolicy {
        EgressPolicy { allowed }
    }

    /// Public addresses and loopback (what `cxb up` runs with, so local speech servers work).
    pub fn with_loopback() -> EgressPolicy {
        let v4 = ipnet::Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("a valid prefix");
        EgressPolicy::allowing(vec![IpNet::V4(v4), IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST))])
    }

    /// The ranges allowed beyond public addresses.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether a request may reach `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Forbidden> {
        let judged = embedded_v4(ip).map_or(ip, IpAddr::V4);
        match classify(judged) {
            None => Ok(()),
            Some(_) if self.allowed.iter().any(|net| net.contains(&ip) || net.contains(&judged)) => Ok(()),
            Some(why) => Err(why),
        }
    }

    /// For a URL written into a document: refuses one whose host is a forbidden address
    /// literal or `localhost` (names are judged when they are resolved, at call time). `Ok`
    /// for URLs without a host this can read.
    pub fn check_url(&self, url: &str) -> Result<(), Forbidden> {
        let Some(host) = url_host(url) else { return Ok(()) };
        if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
            return self.check(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => self.check(ip),
            Err(_) => Ok(()),
        }
    }
}

/// The host of `scheme://[userinfo@]host[:port]/…` (brackets of IPv6 literals removed).
pub fn url_host(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    let host = authority.split(':').next()?;
    (!host.is_empty()).then_some(host)
}

fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let o = v6.octets();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

fn classify(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            match (a, b, c) {
                _ if v4.is_loopback() => Some(Forbidden::Loopback),
                _ if v4.is_private() => Some(Forbidden::Private),
                _ if v4.is_link_local() => Some(Forbidden::LinkLocal),
                (100, 64..=127, _) => Some(Forbidden::SharedNat),
                _ if v4.is_multicast() => Some(Forbidden::Multicast),
                (0, _, _) => Some(Forbidden::Unspecified),
                _ if v4.is_broadcast() => Some(Forbidden::Reserved),
                (240..=255, _, _) | (192, 0, 0) | (198, 18..=19, _) => Some(Forbidden::Reserved),
                (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Some(Forbidden::Reserved),
                _ => None,
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            match s[0] {
                _ if v6.is_loopback() => Some(Forbidden::Loopback),
                _ if v6.is_unspecified() => Some(Forbidden::Unspecified),
                0xfc00..=0xfdff => Some(Forbidden::Private),
                0xfe80..=0xfebf => Some(Forbidden::LinkLocal),
                0xfec0..=0xfeff => Some(Forbidden::Reserved),
                0xff00..=0xffff => Some(Forbidden::Multicast),
                0x2001 if s[1] == 0x0db8 => Some(Forbidden::Reserved),
                // The rest of ::/8 (compatible addresses, discard-only 100::/64).
                0x0000..=0x00ff => Some(Forbidden::Reserved),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn internal_and_special_addresses_are_refused_and_public_ones_pass() {
        let p = EgressPolicy::public_only();
        for (addr, why) in [
            ("127.0.0.1", Forbidden::Loopback),
            ("127.255.0.9", Forbidden::Loopback),
            ("10.1.2.3", Forbidden::Private),
            ("172.16.0.1", Forbidden::Private),
            ("172.31.255.255", Forbidden::Private),
            ("192.168.1.1", Forbidden::Private),
            ("169.254.169.254", Forbidden::LinkLocal),
            ("100.64.0.1", Forbidden::SharedNat),
            ("100.127.255.254", Forbidden::SharedNat),
            ("224.0.0.1", Forbidden::Multicast),
            ("0.0.0.0", Forbidden::Unspecified),
            ("0.1.2.3", Forbidden::Unspecified),
            ("255.255.255.255", Forbidden::Reserved),
            ("240.0.0.1", Forbidden::Reserved),
            ("192.0.0.170", Forbidden::Reserved),
            ("198.18.0.1", Forbidden::Reserved),
            ("::1", Forbidden::Loopback),
            ("::", Forbidden::Unspecified),
            ("fd00::1", Forbidden::Private),
            ("fe80::1", Forbidden::LinkLocal),
            ("ff02::1", Forbidden::Multicast),
            ("::ffff:127.0.0.1", Forbidden::Loopback),
            ("::ffff:169.254.169.254", Forbidden::LinkLocal),
            ("64:ff9b::a9fe:a9fe", Forbidden::LinkLocal),
            ("2002:0a00:0001::1", Forbidden::Private),
            ("2001:db8::1", Forbidden::Reserved),
        ] {
            assert_eq!(p.check(ip(addr)), Err(why), "{addr}");
        }
        for addr in ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn operators_allow_ranges_explicitly() {
        let p = EgressPolicy::allowing(vec!["10.0.0.0/16".parse().expect("net")]);
        assert_eq!(p.check(ip("10.0.5.5")), Ok(()));
        assert_eq!(p.check(ip("10.1.0.1")), Err(Forbidden::Private));
        let local = EgressPolicy::with_loopback();
        assert_eq!(local.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(local.check(ip("::1")), Ok(()));
        assert_eq!(local.check(ip("169.254.169.254")), Err(Forbidden::LinkLocal));
    }

    #[test]
    fn url_literals_are_judged_when_written() {
        let p = EgressPolicy::public_only();
        assert_eq!(p.check_url("http://169.254.169.254/latest/meta-data"), Err(Forbidden::LinkLocal));
        assert_eq!(p.check_url("https://user:pw@127.0.0.1:8443/x"), Err(Forbidden::Loopback));
        assert_eq!(p.check_url("http://[::1]:9000/"), Err(Forbidden::Loopback));
        assert_eq!(p.check_url("tcp://localhost:10300"), Err(Forbidden::Loopback));
        assert_eq!(p.check_url("wss://api.example.com/v1"), Ok(()), "names are judged when resolved");
        assert_eq!(p.check_url("not a url"), Ok(()));
        assert_eq!(url_host("http://[fe80::1]:80/"), Some("fe80::1"));
        assert_eq!(url_host("http://h.example?x"), Some("h.example"));
    }
}
