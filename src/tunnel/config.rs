//! `[tunnel]`: the services exposed from the configuration file, the local addresses of
//! tunnelled names, and the limits of both sides.

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::service::{Service, ServiceError, ServiceSpec};

/// `[tunnel]`: services this node serves through tunnels and how it reaches others' services.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// The loopback range tunnelled names get their local addresses from (docs/PROTOCOL.md
    /// section 9.4). Any 127.x.y.z address works on Linux; macOS needs each one aliased on lo0.
    pub address_range: Ipv4Net,
    /// Tunnel streams this node serves at once, from every client together; more are refused
    /// as busy.
    pub max_streams: usize,
    /// Tunnel streams this node serves at once for any one client peer.
    pub max_streams_per_peer: usize,
    /// Connections to tunnelled names that local programs may hold open at once; more are
    /// reset.
    pub max_connections: usize,
    /// A tunnelled connection that carried no byte either way for this long is closed, in
    /// seconds (both sides apply it).
    pub idle_timeout_secs: u64,
    /// How long a first connection to a peer waits for hole punching to make the path direct
    /// before it goes through the relay, in milliseconds.
    pub direct_wait_ms: u64,
    /// `[[tunnel.expose]]`: services fixed in this file; `p2pdns expose` adds others.
    pub expose: Vec<ServiceSpec>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            address_range: "127.77.0.0/16".parse().expect("a valid range"),
            max_streams: 256,
            max_streams_per_peer: 64,
            max_connections: 256,
            idle_timeout_secs: 3600,
            direct_wait_ms: 2000,
            expose: Vec::new(),
        }
    }
}

impl TunnelConfig {
    /// Checks what serde cannot: a usable loopback range, limits of at least 1, and the
    /// services. Returns the dotted key of the first bad value and what is wrong with it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let loopback: Ipv4Net = "127.0.0.0/8".parse().expect("a valid range");
        let range = self.address_range.trunc();
        if !loopback.contains(&range) || range.prefix_len() > 30 {
            return Err((
                "tunnel.address_range".into(),
                format!("{range} must lie in 127.0.0.0/8 and hold at least 4 addresses"),
            ));
        }
        let limits = [
            ("tunnel.max_streams", self.max_streams as u64),
            (
                "tunnel.max_streams_per_peer",
                self.max_streams_per_peer as u64,
            ),
            ("tunnel.max_connections", self.max_connections as u64),
            ("tunnel.idle_timeout_secs", self.idle_timeout_secs),
        ];
        if let Some((key, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(((*key).into(), "must be at least 1".into()));
        }
        let services = self
            .services()
            .map_err(|(i, e)| (format!("tunnel.expose[{i}]"), e.to_string()))?;
        for (i, s) in services.iter().enumerate() {
            if services[..i]
                .iter()
                .any(|o| o.name == s.name && o.port == s.port)
            {
                return Err((
                    format!("tunnel.expose[{i}]"),
                    format!("{} port {} is exposed twice", s.name, s.port),
                ));
            }
        }
        Ok(())
    }

    /// The services of `[[tunnel.expose]]`, checked.
    ///
    /// # Errors
    /// The first entry that is wrong, with its index.
    pub fn services(&self) -> Result<Vec<Service>, (usize, ServiceError)> {
        self.expose
            .iter()
            .enumerate()
            .map(|(i, spec)| spec.check().map_err(|e| (i, e)))
            .collect()
    }
}
