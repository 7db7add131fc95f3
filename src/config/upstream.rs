//! The forms of an upstream server in `upstream.servers` and `--upstream`, read at load so that
//! a bad one stops the daemon naming its key:
//!
//! - plain DNS, `IP[:PORT]` (port 53): UDP, and TCP when an answer is truncated;
//! - DNS over TLS (RFC 7858), `tls://IP[:PORT][#NAME]` (port 853);
//! - DNS over HTTPS (RFC 8484), `https://IP[:PORT][/PATH][#NAME]` (port 443, path `/dns-query`);
//! - a table, `{ server = "tls://...", spki_sha256 = ["..."], ca_file = "..." }`, for the pins
//!   and the certificate authorities of an encrypted one.
//!
//! An encrypted server's certificate must be valid for NAME, or for its IP address when no
//! NAME is given (RFC 8310 section 8's strict profile: an upstream that cannot be authenticated
//! is not used). The server is written as an address, never as a host name: the daemon cannot
//! look a name up before it has an upstream to ask (systemd-resolved's `DNS=9.9.9.9#dns.quad9.net`
//! reads the same way).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

use base64::Engine as _;
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor, value::MapAccessDeserializer},
};

/// The default port of DNS over TLS (RFC 7858 section 3.1).
const TLS_PORT: u16 = 853;
/// The default port of DNS over HTTPS (HTTPS's).
const HTTPS_PORT: u16 = 443;
/// The path asked when an `https://` server names none: the one RFC 8484's examples use, and
/// most public servers.
const DEFAULT_PATH: &str = "/dns-query";

/// An upstream server: plain or encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamServer {
    /// Plain DNS: UDP, TCP when an answer is truncated.
    Plain(UpstreamAddr),
    /// DNS over TLS or over HTTPS.
    Encrypted(EncryptedServer),
}

/// How an encrypted upstream carries DNS messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptedTransport {
    /// DNS over TLS (RFC 7858): length-prefixed messages on one TLS connection, pipelined.
    Tls,
    /// DNS over HTTPS (RFC 8484): one HTTP/2 POST to `path` per message, multiplexed.
    Https {
        /// The path (and query, if any) of the server's DoH URI, `/dns-query` by default.
        path: String,
    },
}

/// An encrypted upstream: where it is, and how its certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedServer {
    /// DoT or DoH.
    pub transport: EncryptedTransport,
    /// The server's address and port (853 for DoT, 443 for DoH unless given).
    pub addr: SocketAddr,
    /// The name its certificate must be valid for, also sent as SNI (and as the HTTP
    /// authority); lower case, no final dot. `None`: the certificate must be valid for the IP
    /// address.
    pub name: Option<String>,
    /// SHA-256 digests of SubjectPublicKeyInfos (RFC 7469's `pin-sha256`): when given, the
    /// server's own key (its certificate's) must be one of them, on top of the checks above.
    pub spki_sha256: Vec<[u8; 32]>,
    /// A file of PEM certificates trusted instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl UpstreamServer {
    /// Where the server is.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Plain(addr) => addr.0,
            Self::Encrypted(server) => server.addr,
        }
    }

    /// Can queries be sent there? The address as [`UpstreamAddr::check`] says, and an
    /// encrypted server's CA file readable with at least one certificate.
    ///
    /// # Errors
    /// What is wrong, for the message naming the key.
    pub fn check(&self) -> Result<(), String> {
        UpstreamAddr(self.addr()).check()?;
        if let Self::Encrypted(server) = self
            && let Some(path) = &server.ca_file
        {
            crate::dns::upstream::load_ca_file(path).map_err(|error| error.to_string())?;
        }
        Ok(())
    }
}

impl From<UpstreamAddr> for UpstreamServer {
    fn from(addr: UpstreamAddr) -> Self {
        Self::Plain(addr)
    }
}

impl FromStr for UpstreamServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("tls://") {
            return EncryptedServer::tls(s, rest).map(Self::Encrypted);
        }
        if let Some(rest) = s.strip_prefix("https://") {
            return EncryptedServer::https(s, rest).map(Self::Encrypted);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "{s:?}: {scheme}:// is not an upstream protocol here (plain IP[:PORT], \
                 tls://IP[:PORT]#NAME or https://IP[:PORT]/PATH#NAME)"
            ));
        }
        s.parse().map(Self::Plain).map_err(|why| {
            format!("{why}, nor tls://IP[:PORT]#NAME or https://IP[:PORT]/PATH#NAME")
        })
    }
}

impl EncryptedServer {
    /// `tls://` followed by `rest` (`whole` is the text, for messages).
    fn tls(whole: &str, rest: &str) -> Result<Self, String> {
        let (addr, name) = split_name(whole, rest)?;
        let addr = socket_addr(addr, TLS_PORT)?.ok_or_else(|| {
            format!(
                "{whole:?}: {addr:?} is not an IP address with an optional port \
                 (e.g. tls://9.9.9.9#dns.quad9.net, tls://[2620:fe::fe]:853#dns.quad9.net)"
            )
        })?;
        Ok(Self::new(EncryptedTransport::Tls, addr, name))
    }

    /// `https://` followed by `rest` (`whole` is the text, for messages).
    fn https(whole: &str, rest: &str) -> Result<Self, String> {
        let (uri, name) = split_name(whole, rest)?;
        let (authority, path) = uri
            .find('/')
            .map_or((uri, DEFAULT_PATH), |at| uri.split_at(at));
        if authority.contains('@') {
            return Err(format!(
                "{whole:?}: user information has no place in a DoH URI"
            ));
        }
        let Some(addr) = socket_addr(authority, HTTPS_PORT)? else {
            return Err(format!(
                "{whole:?}: {authority:?} is not an IP address: p2pdns cannot look a name up \
                 before it has an upstream; write the server's address, and its name after \
                 '#' (e.g. https://9.9.9.9/dns-query#dns.quad9.net)"
            ));
        };
        if path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!("{whole:?}: {path:?} is not a URI path"));
        }
        let transport = EncryptedTransport::Https {
            path: path.to_owned(),
        };
        Ok(Self::new(transport, addr, name))
    }

    fn new(transport: EncryptedTransport, addr: SocketAddr, name: Option<String>) -> Self {
        Self {
            transport,
            addr,
            name,
            spki_sha256: Vec::new(),
            ca_file: None,
        }
    }
}

/// `rest` split at its `#NAME`, the name checked: a DNS name, not an address.
fn split_name<'a>(whole: &str, rest: &'a str) -> Result<(&'a str, Option<String>), String> {
    let Some((head, name)) = rest.split_once('#') else {
        return Ok((rest, None));
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{whole:?}: #{name} is an address; leave it out, the certificate is then checked \
             for the server's address"
        ));
    }
    if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
        return Err(format!(
            "{whole:?}: {name:?} after '#' is not a host name (the name the server's \
             certificate is for, e.g. dns.quad9.net)"
        ));
    }
    Ok((head, Some(name)))
}

impl fmt::Display for UpstreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(addr) => addr.fmt(f),
            Self::Encrypted(server) => server.fmt(f),
        }
    }
}

impl fmt::Display for EncryptedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            EncryptedTransport::Tls => write!(f, "tls://{}", self.addr)?,
            EncryptedTransport::Https { path } => write!(f, "https://{}{path}", self.addr)?,
        }
        match &self.name {
            Some(name) => write!(f, "#{name}"),
            None => Ok(()),
        }
    }
}

/// The table form of an upstream server.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    server: String,
    #[serde(default)]
    spki_sha256: Vec<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

impl TryFrom<ServerTable> for UpstreamServer {
    type Error = String;

    fn try_from(table: ServerTable) -> Result<Self, String> {
        let mut server = match table.server.parse()? {
            Self::Encrypted(server) => server,
            Self::Plain(addr) if table.spki_sha256.is_empty() && table.ca_file.is_none() => {
                return Ok(Self::Plain(addr));
            }
            Self::Plain(addr) => {
                return Err(format!(
                    "{addr}: spki_sha256 and ca_file are for tls:// and https:// servers"
                ));
            }
        };
        server.spki_sha256 = table
            .spki_sha256
            .iter()
            .map(|pin| parse_pin(pin))
            .collect::<Result<_, _>>()?;
        server.ca_file = table.ca_file;
        Ok(Self::Encrypted(server))
    }
}

/// A pin: the base64 of a SHA-256 digest (44 characters).
fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    base64::engine::general_purpose::STANDARD
        .decode(pin)
        .ok()
        .and_then(|digest| <[u8; 32]>::try_from(digest).ok())
        .ok_or_else(|| {
            format!(
                "spki_sha256 {pin:?} is not the base64 of a SHA-256 digest (44 characters: \
                 openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | \
                 openssl dgst -sha256 -binary | base64)"
            )
        })
}

impl<'de> Deserialize<'de> for UpstreamServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Server;
        impl<'de> Visitor<'de> for Server {
            type Value = UpstreamServer;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an upstream server (\"IP[:PORT]\", \"tls://...\", \"https://...\") or a table { server = ..., spki_sha256 = [...], ca_file = ... }")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<UpstreamServer, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<UpstreamServer, M::Error> {
                let table = ServerTable::deserialize(MapAccessDeserializer::new(map))?;
                UpstreamServer::try_from(table).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(Server)
    }
}

/// A plain upstream server: an IP address with an optional port (53 if absent). Also what
/// resolv.conf's `nameserver` lines give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAddr(pub SocketAddr);

impl FromStr for UpstreamAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        socket_addr(s, 53)?.map(Self).ok_or_else(|| {
            format!(
                "{s:?} is not an IP address with an optional port (e.g. 9.9.9.9, 9.9.9.9:53, \
                 [2620:fe::fe]:53, [fe80::1%eth0]:53)"
            )
        })
    }
}

/// `text` as an IP address with an optional port (`default` if absent); `None` if it is none.
///
/// # Errors
/// Its zone names no interface of this machine.
fn socket_addr(text: &str, default: u16) -> Result<Option<SocketAddr>, String> {
    let text = with_interface_index(text)?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, default)));
    }
    // A link-local address with its zone and no port: fe80::1%2.
    Ok(format!("[{bare}]:{default}").parse::<SocketAddr>().ok())
}

/// `text` with the interface name of an IPv6 zone (`fe80::1%eth0`, RFC 4007 section 11)
/// replaced by the interface's index, the only form Rust's addresses read.
///
/// # Errors
/// The name is no interface of this machine.
fn with_interface_index(text: &str) -> Result<String, String> {
    let Some((head, tail)) = text.split_once('%') else {
        return Ok(text.to_owned());
    };
    let (zone, rest) = tail.split_at(tail.find(']').unwrap_or(tail.len()));
    if zone.is_empty() || zone.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(text.to_owned());
    }
    let index = nix::net::if_::if_nametoindex(zone)
        .map_err(|_| format!("{zone:?} in {text:?} is no network interface of this machine"))?;
    Ok(format!("{head}%{index}{rest}"))
}

impl UpstreamAddr {
    /// Can a query be sent to this address? Not to port 0, to "any address" (0.0.0.0/8, ::,
    /// RFC 1122 section 3.2.1.3 and RFC 4291 section 2.5.2), to a multicast or the broadcast
    /// address, nor to a link-local IPv6 address without its interface (`[fe80::1%2]:53`).
    /// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
    ///
    /// # Errors
    /// What is wrong with the address, for the message naming its key.
    pub fn check(&self) -> Result<(), String> {
        let ip = self.0.ip().to_canonical();
        let why = if self.0.port() == 0 {
            "port 0 is no server's port"
        } else if ip.is_unspecified() || matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0) {
            "it means \"any address\" and reaches no server (for one on this machine: 127.0.0.1 or ::1)"
        } else if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            "a multicast or broadcast address is no DNS server (multicast DNS is RFC 6762's)"
        } else if matches!((ip, self.0), (IpAddr::V6(v6), SocketAddr::V6(sa)) if v6.is_unicast_link_local() && sa.scope_id() == 0)
        {
            "a link-local address needs its interface's index, e.g. [fe80::1%2]:53"
        } else {
            return Ok(());
        };
        Err(format!("{self} cannot be an upstream server: {why}"))
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for UpstreamAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn encrypted(text: &str) -> EncryptedServer {
        match text.parse::<UpstreamServer>() {
            Ok(UpstreamServer::Encrypted(server)) => server,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn encrypted_forms_take_their_ports_names_and_paths() {
        let dot = encrypted("tls://127.0.0.1#Dns.Example.");
        assert_eq!(dot.addr, "127.0.0.1:853".parse().unwrap());
        assert_eq!(dot.name.as_deref(), Some("dns.example"));
        assert_eq!(dot.to_string(), "tls://127.0.0.1:853#dns.example");
        let dot = encrypted("tls://[2620:fe::fe]:8853");
        assert_eq!(dot.addr, "[2620:fe::fe]:8853".parse().unwrap());
        assert_eq!(dot.name, None);
        let doh = encrypted("https://9.9.9.9#dns.quad9.net");
        assert_eq!(doh.addr, "9.9.9.9:443".parse().unwrap());
        assert_eq!(
            doh.transport,
            EncryptedTransport::Https {
                path: "/dns-query".to_owned()
            }
        );
        let doh = encrypted("https://[::1]:8443/resolve?x=1");
        assert_eq!(doh.to_string(), "https://[::1]:8443/resolve?x=1");
        for text in [
            "tls://127.0.0.1:853#dns.example",
            "https://127.0.0.1:8443/q#d.example",
        ] {
            assert_eq!(encrypted(text).to_string(), text, "read back as written");
        }
    }

    #[test]
    fn bad_encrypted_forms_say_what_is_wrong() {
        for (text, expected) in [
            ("https://dns.google/dns-query", "not an IP address"),
            ("tls://dns.google#dns.google", "not an IP address"),
            ("tls://1.1.1.1#1.1.1.1", "is an address"),
            ("tls://1.1.1.1#bad name", "not a host name"),
            ("quic://1.1.1.1", "not an upstream protocol"),
            ("https://user@1.1.1.1/dns-query", "user information"),
            ("https://1.1.1.1/a b", "not a URI path"),
            ("dns.google", "nor tls://"),
        ] {
            let why = text.parse::<UpstreamServer>().unwrap_err();
            assert!(why.contains(expected), "{text}: {why}");
        }
    }

    /// The error of loading `[upstream]` with `servers`, causes included.
    fn refusal(servers: &str) -> String {
        let text = format!("[upstream]\nservers = {servers}\n");
        let error = Config::from_toml(&text, "test.toml").unwrap_err();
        let first: &(dyn std::error::Error + 'static) = &error;
        std::iter::successors(Some(first), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_table_form_adds_pins_and_a_ca_file() {
        let pin = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let text = format!(
            "[upstream]\nservers = [\"9.9.9.9\", {{ server = \"tls://127.0.0.1#dns.example\", spki_sha256 = [\"{pin}\"] }}]\n"
        );
        let config = Config::from_toml(&text, "test.toml").unwrap();
        let UpstreamServer::Encrypted(server) = &config.upstream.servers[1] else {
            panic!("{:?}", config.upstream.servers);
        };
        assert_eq!(server.spki_sha256, vec![[7u8; 32]]);
        for (servers, expected) in [
            (
                "[{ server = \"tls://127.0.0.1\", spki_sha256 = [\"abc\"] }]",
                "base64 of a SHA-256",
            ),
            (
                "[{ server = \"127.0.0.1\", ca_file = \"/x\" }]",
                "are for tls:// and https://",
            ),
            (
                "[{ server = \"tls://127.0.0.1\", pin = 1 }]",
                "unknown field `pin`",
            ),
            ("[\"tls://127.0.0.1:0#a.example\"]", "port 0"),
        ] {
            let why = refusal(servers);
            assert!(why.contains(expected), "{servers}: {why}");
        }
        let why = refusal(
            "[\"9.9.9.9\", { server = \"tls://127.0.0.1\", ca_file = \"/nonexistent/ca.pem\" }]",
        );
        assert!(
            why.contains("upstream.servers[1]") && why.contains("/nonexistent/ca.pem"),
            "{why}"
        );
    }
}
