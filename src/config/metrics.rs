//! `[metrics]`: the opt-in Prometheus endpoint (served by [`crate::metrics`]).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, ConfigWarning, invalid};

/// The default address of the endpoint: loopback, so that turning metrics on shows nobody
/// else what this machine asks; the port is in the range exporters use (9100 and up) and
/// taken by no well-known one.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9253);

/// `[metrics]`: an HTTP endpoint answering `GET /metrics` in the Prometheus text format,
/// off unless asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve the endpoint (`--metrics-listen` turns it on too).
    pub enabled: bool,
    /// The address the endpoint listens on (TCP). Anything but loopback is warned about: the
    /// figures tell who uses this resolver how much, and the endpoint has no authentication.
    pub listen: SocketAddr,
    /// Scrapes answered at once; a connection past it is closed at once.
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: DEFAULT_METRICS_LISTEN,
            max_connections: 16,
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, when the endpoint is on.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.enabled.then_some(self.listen)
    }

    /// Refuses a listen address no client could reach (multicast, broadcast). The range of
    /// `max_connections` is [`super::ranges`]'.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let ip = self.listen.ip();
        let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_multicast() || broadcast {
            return Err(invalid(
                "metrics.listen",
                format!("{ip} is not a unicast address a scraper can connect to"),
            ));
        }
        Ok(())
    }

    /// A reachable endpoint beyond this machine, when it is on.
    pub(super) fn warnings(&self) -> Vec<ConfigWarning> {
        if !self.enabled || self.listen.ip().is_loopback() {
            return Vec::new();
        }
        vec![ConfigWarning {
            key: "metrics.listen".into(),
            message: format!(
                "{} is not a loopback address: anyone who reaches it reads how much this \
                 resolver is used and by what (the endpoint has no authentication); keep it on \
                 127.0.0.1 and scrape through a tunnel or a firewall rule if you can",
                self.listen
            ),
        }]
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn load(section: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("[metrics]\n{section}\n"), "test")
    }

    fn refused_key(section: &str) -> String {
        match load(section) {
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(ConfigError::Parse { source, .. }) => source.to_string(),
            other => panic!("{section:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn off_by_default_and_on_loopback_when_enabled() {
        let config = load("").unwrap();
        assert_eq!(config.metrics.endpoint(), None);
        let config = load("enabled = true").unwrap();
        let listen = config.metrics.endpoint().unwrap();
        assert!(listen.ip().is_loopback(), "{listen}");
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        assert_eq!(
            refused_key("max_connections = 0"),
            "metrics.max_connections"
        );
        assert_eq!(
            refused_key("max_connections = 5000"),
            "metrics.max_connections"
        );
        assert_eq!(refused_key("listen = \"224.0.0.1:9253\""), "metrics.listen");
        assert_eq!(
            refused_key("listen = \"255.255.255.255:9253\""),
            "metrics.listen"
        );
        let parse = refused_key("listen = \"localhost\"");
        assert!(parse.contains("listen"), "{parse}");
        let unknown = refused_key("port = 9253");
        assert!(unknown.contains("port"), "{unknown}");
    }

    #[test]
    fn a_public_listen_address_is_taken_with_a_warning() {
        let config = load("enabled = true\nlisten = \"0.0.0.0:9253\"").unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].key, "metrics.listen");
        // Off, the address is not used: nothing to warn about.
        let config = load("listen = \"0.0.0.0:9253\"").unwrap();
        assert!(config.warnings().is_empty());
    }
}
