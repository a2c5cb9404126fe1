//! Which addresses found through public MX lookups may be connected to.
//!
//! A hostile or broken zone can point its MX at 127.0.0.1, at the
//! operator's private network or at a link-local service. Delivering
//! there turns the MTA into a probe of its own network, so such addresses
//! are refused unless the configuration allows their class explicitly
//! (tests allow loopback). Multicast, broadcast and reserved ranges are
//! never usable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, as far as delivery policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Routable on the public Internet.
    Public,
    /// 127.0.0.0/8 and ::1.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16), RFC 6598 shared space
    /// (100.64/10) and RFC 4193 unique local (fc00::/7).
    Private,
    /// 169.254/16 and fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8 and ::.
    Unspecified,
    /// Multicast, broadcast and 240/4: never a mail server.
    Reserved,
}

/// Classifies `ip`. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are
/// classified as the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, _, _] = ip.octets();
    if a == 0 {
        AddressClass::Unspecified
    } else if a == 127 {
        AddressClass::Loopback
    } else if a == 10
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..128).contains(&b))
    {
        AddressClass::Private
    } else if a == 169 && b == 254 {
        AddressClass::LinkLocal
    } else if a >= 224 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xff00 == 0xff00 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Which non-public address classes a route allows. The default allows
/// none: only public addresses are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Allow 127.0.0.0/8 and ::1 (tests, local relays).
    pub allow_loopback: bool,
    /// Allow RFC 1918, RFC 6598 and unique local addresses.
    pub allow_private: bool,
    /// Allow link-local addresses.
    pub allow_link_local: bool,
}

impl AddressPolicy {
    /// A policy that also allows loopback, as tests on 127.0.0.1 need.
    pub fn allow_loopback() -> Self {
        AddressPolicy {
            allow_loopback: true,
            ..AddressPolicy::default()
        }
    }

    /// True when delivery to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            AddressClass::Public => true,
            AddressClass::Loopback => self.allow_loopback,
            AddressClass::Private => self.allow_private,
            AddressClass::LinkLocal => self.allow_link_local,
            AddressClass::Unspecified | AddressClass::Reserved => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classes() {
        assert_eq!(class("8.8.8.8"), AddressClass::Public);
        assert_eq!(class("0.0.0.0"), AddressClass::Unspecified);
        assert_eq!(class("0.1.2.3"), AddressClass::Unspecified);
        assert_eq!(class("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("127.255.0.9"), AddressClass::Loopback);
        assert_eq!(class("10.1.2.3"), AddressClass::Private);
        assert_eq!(class("172.16.0.1"), AddressClass::Private);
        assert_eq!(class("172.31.255.255"), AddressClass::Private);
        assert_eq!(class("172.32.0.1"), AddressClass::Public);
        assert_eq!(class("172.15.0.1"), AddressClass::Public);
        assert_eq!(class("192.168.1.1"), AddressClass::Private);
        assert_eq!(class("100.64.0.1"), AddressClass::Private);
        assert_eq!(class("100.128.0.1"), AddressClass::Public);
        assert_eq!(class("169.254.169.254"), AddressClass::LinkLocal);
        assert_eq!(class("224.0.0.1"), AddressClass::Reserved);
        assert_eq!(class("255.255.255.255"), AddressClass::Reserved);
        assert_eq!(class("2001:db8::1"), AddressClass::Public);
        assert_eq!(class("::"), AddressClass::Unspecified);
        assert_eq!(class("::1"), AddressClass::Loopback);
        assert_eq!(class("fd00::1"), AddressClass::Private);
        assert_eq!(class("fc12::1"), AddressClass::Private);
        assert_eq!(class("fe80::1"), AddressClass::LinkLocal);
        assert_eq!(class("febf::1"), AddressClass::LinkLocal);
        assert_eq!(class("fec0::1"), AddressClass::Public);
        assert_eq!(class("ff02::1"), AddressClass::Reserved);
        assert_eq!(class("::ffff:127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::ffff:10.0.0.1"), AddressClass::Private);
    }

    #[test]
    fn default_refuses_everything_but_public() {
        let policy = AddressPolicy::default();
        for s in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "fd00::1",
            "fe80::1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!policy.permits(s.parse().unwrap()), "{s}");
        }
        assert!(policy.permits("192.0.2.1".parse().unwrap()));
        let loopback = AddressPolicy::allow_loopback();
        assert!(loopback.permits("127.0.0.1".parse().unwrap()));
        assert!(loopback.permits("::1".parse().unwrap()));
        assert!(!loopback.permits("10.0.0.1".parse().unwrap()));
        assert!(!loopback.permits("0.0.0.0".parse().unwrap()));
    }
}
