//! The services this node exposes through tunnels, and their place in the name's record.
//!
//! A service is a name and a port (`site.p2p` port 80) whose tunnel streams are connected to
//! one local target (`127.0.0.1:8080`), for every client or only for the keys on its allow
//! list. Services come from the configuration (`[[tunnel.expose]]`, fixed while the daemon
//! runs) and from `p2pdns expose` (kept in `exposed.toml` in the data directory, across
//! restarts). Each one is announced by an SRV record at `_p2pdns-tunnel._tcp.<name>` in the
//! owner's signed record (docs/PROTOCOL.md section 9.1), which is also how clients find the
//! serving peer and the ports to listen on.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use hickory_proto::rr::{LowerName, Name, RData, Record, rdata::SRV};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    record::{self, NameRecord, key_name, key_of_name, record_name_for},
    state::{SaveError, read_toml, save_toml},
};

/// File in the data directory holding the services exposed with `p2pdns expose`.
pub const EXPOSED_FILE: &str = "exposed.toml";
/// The first two labels of the SRV owner that announces a tunnelled name (RFC 2782 service
/// and protocol labels).
pub const SRV_PREFIX: &str = "_p2pdns-tunnel._tcp";
/// TTL of the SRV records announcing services, in seconds. Resolvers keep a record for its
/// smallest TTL, so this bounds how long a client keeps using a service after it is removed,
/// or ignores one just added.
const SRV_TTL: u32 = 60;

/// Errors of a service's definition or of the service table.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The name is not a `.p2p` name a node can publish (`site.p2p` or a name below it, letters,
    /// digits and hyphens).
    #[error("{0:?} is not a name under .p2p that this node can publish (site.p2p or www.site.p2p)")]
    BadName(String),
    /// Port 0 was given.
    #[error("port 0 cannot be exposed")]
    BadPort,
    /// The target is not `HOST:PORT`.
    #[error("{0:?} is not HOST:PORT (for example 127.0.0.1:8080)")]
    BadTarget(String),
    /// An allow-list entry is not a key name (`<52 z-base-32 characters>.p2p`).
    #[error("{0:?} is not a key name (the 52-character name `p2pdns status` shows as key_name)")]
    BadKeyName(String),
    /// The service is defined in the configuration file, which the CLI does not change.
    #[error("{name} port {port} is exposed in the configuration file; change it there")]
    FromConfig {
        /// The service's name.
        name: String,
        /// The service's port.
        port: u16,
    },
    /// `exposed.toml` could not be written (a full disk says so); nothing changed.
    #[error(transparent)]
    Save(#[from] SaveError),
}

/// A service as a user writes it: in `[[tunnel.expose]]` or on the `p2pdns expose` command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `site`, `site.p2p` or a name below it (`ssh.home.p2p`).
    pub name: String,
    /// The port clients connect to.
    pub port: u16,
    /// Where this node connects each stream: `HOST:PORT`; `127.0.0.1:<port>` when left out.
    #[serde(default)]
    pub to: Option<String>,
    /// Key names (`<key>.p2p`, or the bare 52-character label) of the only clients let in;
    /// empty: every client.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A checked service: names normalized, allow list decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Lower case, in presentation form without the final dot (`site.p2p`), as streams ask for
    /// it (docs/PROTOCOL.md section 9.2).
    pub name: String,
    /// The port clients connect to.
    pub port: u16,
    /// Where each stream is connected: `HOST:PORT`, resolved at each connection.
    pub to: String,
    /// Key names (`<key>.p2p`) of the only clients let in; empty: every client.
    pub allow: Vec<String>,
}

impl ServiceSpec {
    /// Checks the spec and normalizes it into a [`Service`].
    ///
    /// # Errors
    /// [`ServiceError::BadName`], [`ServiceError::BadPort`], [`ServiceError::BadTarget`] or
    /// [`ServiceError::BadKeyName`] for the first value that is wrong.
    pub fn check(&self) -> Result<Service, ServiceError> {
        let name = service_name(&self.name)?;
        if self.port == 0 {
            return Err(ServiceError::BadPort);
        }
        let to = match &self.to {
            None => format!("127.0.0.1:{}", self.port),
            Some(to) => check_target(to)?,
        };
        let allow = self
            .allow
            .iter()
            .map(|entry| allowed_key_name(entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Service {
            name: name.to_ascii().trim_end_matches('.').to_owned(),
            port: self.port,
            to,
            allow,
        })
    }
}

/// `text` as a name a node can serve: under `.p2p`, below a record set (`site.p2p.`) whose name
/// is valid, and with LDH labels only.
fn service_name(text: &str) -> Result<Name, ServiceError> {
    let bad = || ServiceError::BadName(text.to_owned());
    let name = record::p2p_name(text).map_err(|_| bad())?;
    let set = record_name_for(&LowerName::new(&name)).ok_or_else(bad)?;
    record::check_name(&set).map_err(|_| bad())?;
    let ldh = name.iter().all(|label| {
        !label.is_empty()
            && label
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    });
    if !ldh {
        return Err(bad());
    }
    Ok(name)
}

/// `HOST:PORT` with a non-empty host and a port above 0; IPv6 hosts in brackets.
fn check_target(text: &str) -> Result<String, ServiceError> {
    let bad = || ServiceError::BadTarget(text.to_owned());
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if port == 0 || bare.is_empty() || (bare.contains(':') && !host.starts_with('[')) {
        return Err(bad());
    }
    Ok(text.trim().to_owned())
}

/// A key name as `<key>.p2p` from `<key>.p2p`, `<key>.p2p.` or `<key>`.
fn allowed_key_name(text: &str) -> Result<String, ServiceError> {
    let bad = || ServiceError::BadKeyName(text.to_owned());
    let name = record::p2p_name(text).map_err(|_| bad())?;
    let key = key_of_name(&name).filter(|_| name.num_labels() == 2);
    let key = key.ok_or_else(bad)?;
    Ok(key_name(&key).to_ascii().trim_end_matches('.').to_owned())
}

impl Service {
    /// The spec that makes this service again.
    pub fn spec(&self) -> ServiceSpec {
        ServiceSpec {
            name: self.name.clone(),
            port: self.port,
            to: Some(self.to.clone()),
            allow: self.allow.clone(),
        }
    }

    /// Whether the peer `client` may use the service.
    pub fn allows(&self, client: &PeerId) -> bool {
        self.allow.is_empty()
            || peer_key_name(client).is_some_and(|name| self.allow.contains(&name))
    }

    /// The name as a fully qualified [`Name`].
    fn fqdn(&self) -> Name {
        Name::from_ascii(format!("{}.", self.name)).expect("checked when the service was made")
    }
}

/// The key name (`<key>.p2p`) of a peer whose identity is an Ed25519 key.
pub fn peer_key_name(peer: &PeerId) -> Option<String> {
    let key = peer_ed25519(peer)?;
    Some(key_name(&key).to_ascii().trim_end_matches('.').to_owned())
}

/// The Ed25519 key a peer id holds inline (identity multihash), if it is one.
pub(crate) fn peer_ed25519(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash = libp2p::multihash::Multihash::<64>::from_bytes(&peer.to_bytes()).ok()?;
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(public.try_into_ed25519().ok()?.to_bytes())
}

/// The peer id of an Ed25519 key (docs/PROTOCOL.md section 8).
pub fn key_peer_id(key: &[u8; 32]) -> Option<PeerId> {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p::identity::PublicKey::from(public).to_peer_id())
}

/// What a record says about `qname`'s tunnel (docs/PROTOCOL.md section 9.1): the serving peer
/// and its ports, sorted; `None` when the name is not tunnelled. Several targets: the one
/// with the most ports (then the first in the record) wins.
pub fn tunnel_of(record: &NameRecord, qname: &Name) -> Option<(PeerId, Vec<u16>)> {
    let owner = srv_owner(qname)?;
    let mut by_target: BTreeMap<[u8; 32], Vec<u16>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in &record.records {
        let RData::SRV(srv) = &r.data else { continue };
        if LowerName::new(&r.name) != owner {
            continue;
        }
        let Some(key) = key_of_name(&srv.target).filter(|_| srv.target.num_labels() == 2) else {
            continue;
        };
        if srv.port == 0 {
            continue;
        }
        let ports = by_target.entry(key).or_default();
        if ports.is_empty() {
            order.push(key);
        }
        if !ports.contains(&srv.port) {
            ports.push(srv.port);
        }
    }
    let key = order.iter().max_by_key(|k| {
        (
            by_target[*k].len(),
            std::cmp::Reverse(order.iter().position(|o| o == *k)),
        )
    })?;
    let mut ports = by_target.remove(key)?;
    ports.sort_unstable();
    Some((key_peer_id(key)?, ports))
}

/// `_p2pdns-tunnel._tcp.<qname>`, lower case.
fn srv_owner(qname: &Name) -> Option<LowerName> {
    let name =
        Name::from_ascii(format!("{SRV_PREFIX}.{}", qname.to_lowercase().to_ascii())).ok()?;
    Some(LowerName::new(&name))
}

/// Whether `record` is an SRV announcing a tunnel served by the key `key`: the SRV records this
/// node manages in its own records.
pub fn is_own_tunnel_srv(record: &Record, key: &[u8; 32]) -> bool {
    let RData::SRV(srv) = &record.data else {
        return false;
    };
    let under_prefix = record
        .name
        .iter()
        .take(2)
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
        == SRV_PREFIX;
    under_prefix && key_of_name(&srv.target) == Some(*key)
}

/// The services exposed here: the configuration's and the CLI's.
#[derive(Debug)]
pub struct ServiceTable {
    path: PathBuf,
    from_config: Vec<Service>,
    exposed: Vec<Service>,
}

#[derive(Default, Serialize, Deserialize)]
struct ExposedFile {
    #[serde(default)]
    services: Vec<Service>,
}

impl ServiceTable {
    /// The configuration's services and those saved in `data_dir`. A saved service that the
    /// configuration also defines (same name and port) is dropped: the file wins.
    pub fn load(data_dir: &Path, from_config: Vec<Service>) -> Self {
        let path = data_dir.join(EXPOSED_FILE);
        let file: ExposedFile = read_toml(&path).unwrap_or_default();
        let mut exposed = Vec::new();
        for service in file.services {
            match service.spec().check() {
                Ok(s) if !from_config.iter().any(|c| same(c, &s)) => exposed.push(s),
                Ok(_) => {}
                Err(error) => warn!(name = %service.name, %error, "ignoring a saved service"),
            }
        }
        Self {
            path,
            from_config,
            exposed,
        }
    }

    /// Every service, the configuration's first, each with whether it comes from there.
    pub fn all(&self) -> impl Iterator<Item = (&Service, bool)> {
        self.from_config
            .iter()
            .map(|s| (s, true))
            .chain(self.exposed.iter().map(|s| (s, false)))
    }

    /// The service for `name` (as streams ask for it, `site.p2p`) and `port`.
    pub fn find(&self, name: &str, port: u16) -> Option<&Service> {
        self.all()
            .map(|(s, _)| s)
            .find(|s| s.port == port && s.name == name)
    }

    /// Adds `service`, replacing the CLI's service of the same name and port; saved before it
    /// returns.
    ///
    /// # Errors
    /// [`ServiceError::FromConfig`] when the configuration defines that name and port;
    /// [`ServiceError::Save`] when the file cannot be written (nothing changed).
    pub fn expose(&mut self, service: Service) -> Result<(), ServiceError> {
        if self.from_config.iter().any(|c| same(c, &service)) {
            return Err(ServiceError::FromConfig {
                name: service.name,
                port: service.port,
            });
        }
        let mut next = self.exposed.clone();
        next.retain(|s| !same(s, &service));
        next.push(service);
        self.save(next)
    }

    /// Removes the CLI's services of `name` (on `port`, or every port); saved before it
    /// returns. Returns the ports removed.
    ///
    /// # Errors
    /// [`ServiceError::FromConfig`] when only the configuration defines a matching service;
    /// [`ServiceError::Save`] when the file cannot be written (nothing changed).
    pub fn unexpose(&mut self, name: &str, port: Option<u16>) -> Result<Vec<u16>, ServiceError> {
        let matches = |s: &Service| s.name == name && port.is_none_or(|p| s.port == p);
        let removed: Vec<u16> = self
            .exposed
            .iter()
            .filter(|s| matches(s))
            .map(|s| s.port)
            .collect();
        if removed.is_empty()
            && let Some(fixed) = self.from_config.iter().find(|s| matches(s))
        {
            return Err(ServiceError::FromConfig {
                name: fixed.name.clone(),
                port: fixed.port,
            });
        }
        if !removed.is_empty() {
            let next = self
                .exposed
                .iter()
                .filter(|s| !matches(s))
                .cloned()
                .collect();
            self.save(next)?;
        }
        Ok(removed)
    }

    /// The SRV records announcing the services under the record set `set` (`site.p2p.`),
    /// served by the key `key` (docs/PROTOCOL.md section 9.1).
    pub fn srv_records(&self, set: &Name, key: &[u8; 32]) -> Vec<Record> {
        let set = LowerName::new(set);
        let target = key_name(key);
        self.all()
            .map(|(s, _)| s)
            .filter(|s| set.zone_of(&LowerName::new(&s.fqdn())))
            .filter_map(|s| {
                let owner = Name::from_ascii(format!("{SRV_PREFIX}.{}.", s.name)).ok()?;
                let srv = SRV::new(0, 0, s.port, target.clone());
                Some(Record::from_rdata(owner, SRV_TTL, RData::SRV(srv)))
            })
            .collect()
    }

    /// The record sets (`site.p2p.`) that hold a service.
    pub fn record_sets(&self) -> Vec<Name> {
        let mut sets: Vec<Name> = self
            .all()
            .filter_map(|(s, _)| record_name_for(&LowerName::new(&s.fqdn())))
            .collect();
        sets.sort();
        sets.dedup();
        sets
    }

    fn save(&mut self, next: Vec<Service>) -> Result<(), ServiceError> {
        let file = ExposedFile {
            services: next.clone(),
        };
        save_toml(&self.path, &file)?;
        self.exposed = next;
        Ok(())
    }
}

fn same(a: &Service, b: &Service) -> bool {
    a.name == b.name && a.port == b.port
}

#[cfg(test)]
mod tests {
    use libp2p::identity::ed25519;

    use super::*;

    fn spec(name: &str, port: u16) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            port,
            to: None,
            allow: Vec::new(),
        }
    }

    fn key() -> ed25519::Keypair {
        ed25519::Keypair::generate()
    }

    #[test]
    fn a_spec_is_normalized_and_checked() {
        let service = spec("WWW.Site", 80).check().unwrap();
        assert_eq!(service.name, "www.site.p2p");
        assert_eq!(service.to, "127.0.0.1:80");
        let mut with_target = spec("site.p2p.", 22);
        with_target.to = Some("[::1]:2222".into());
        assert_eq!(with_target.check().unwrap().to, "[::1]:2222");

        for bad in ["", "p2p", "-site", "site_1", "a..b", "under_score.site"] {
            assert!(
                matches!(spec(bad, 80).check(), Err(ServiceError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            spec("site", 0).check(),
            Err(ServiceError::BadPort)
        ));
        for to in ["8080", "host:", ":80", "host:0", "::1:80", "host:99999"] {
            let mut s = spec("site", 80);
            s.to = Some(to.into());
            assert!(
                matches!(s.check(), Err(ServiceError::BadTarget(_))),
                "{to:?}"
            );
        }
    }

    #[test]
    fn allow_lists_take_key_names_in_any_form_and_match_peer_ids() {
        let client = key();
        let peer = libp2p::identity::PublicKey::from(client.public()).to_peer_id();
        let name = key_name(&client.public().to_bytes()).to_ascii();
        let label = name.split('.').next().unwrap().to_owned();
        for form in [name.clone(), name.trim_end_matches('.').to_owned(), label] {
            let mut s = spec("ssh.home", 22);
            s.allow = vec![form.clone()];
            let service = s.check().unwrap();
            assert_eq!(service.allow, vec![name.trim_end_matches('.')], "{form}");
            assert!(service.allows(&peer), "{form}");
            let stranger = libp2p::identity::PublicKey::from(key().public()).to_peer_id();
            assert!(!service.allows(&stranger));
        }
        let mut s = spec("ssh.home", 22);
        s.allow = vec!["site.p2p".into()];
        assert!(matches!(s.check(), Err(ServiceError::BadKeyName(_))));
        assert!(spec("open", 80).check().unwrap().allows(&peer));
    }

    /// A record of `owner` holding `records`.
    fn record(owner: &ed25519::Keypair, records: Vec<Record>) -> NameRecord {
        let name = Name::from_ascii("site.p2p.").unwrap();
        NameRecord::sign(owner, &name, 1, record::unix_now() + 3600, records).unwrap()
    }

    #[test]
    fn the_announced_srv_records_name_the_serving_peer_and_ports() {
        let dir = std::env::temp_dir().join(format!("p2pdns-svc-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let owner = key();
        let owner_key = owner.public().to_bytes();
        let mut table = ServiceTable::load(&dir, vec![spec("site", 443).check().unwrap()]);
        table.expose(spec("site", 80).check().unwrap()).unwrap();
        table.expose(spec("www.site", 80).check().unwrap()).unwrap();
        table.expose(spec("other", 80).check().unwrap()).unwrap();
        let set = Name::from_ascii("site.p2p.").unwrap();
        let srvs = table.srv_records(&set, &owner_key);
        assert_eq!(
            srvs.len(),
            3,
            "site:443, site:80, www.site:80, not other: {srvs:?}"
        );
        assert!(srvs.iter().all(|r| is_own_tunnel_srv(r, &owner_key)));
        assert!(!is_own_tunnel_srv(&srvs[0], &key().public().to_bytes()));

        let signed = record(&owner, srvs);
        let peer = libp2p::identity::PublicKey::from(owner.public()).to_peer_id();
        let site = Name::from_ascii("Site.P2P.").unwrap();
        assert_eq!(tunnel_of(&signed, &site), Some((peer, vec![80, 443])));
        let www = Name::from_ascii("www.site.p2p.").unwrap();
        assert_eq!(tunnel_of(&signed, &www), Some((peer, vec![80])));
        let none = Name::from_ascii("mail.site.p2p.").unwrap();
        assert_eq!(tunnel_of(&signed, &none), None);

        // Saved and loaded again; the configuration's service is not saved.
        let again = ServiceTable::load(&dir, Vec::new());
        assert_eq!(again.all().count(), 3);
        assert!(again.find("site.p2p", 443).is_none());
        assert!(again.find("www.site.p2p", 80).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn srv_records_that_do_not_name_a_key_are_ignored() {
        let owner = key();
        let srv = |target: &str, port| {
            Record::from_rdata(
                Name::from_ascii("_p2pdns-tunnel._tcp.site.p2p.").unwrap(),
                300,
                RData::SRV(SRV::new(0, 0, port, Name::from_ascii(target).unwrap())),
            )
        };
        let other = key_name(&key().public().to_bytes()).to_ascii();
        let signed = record(
            &owner,
            vec![
                srv("www.example.com.", 80),
                srv(".", 80),
                srv(&other, 0),
                srv(&other, 8080),
            ],
        );
        let site = Name::from_ascii("site.p2p.").unwrap();
        let (peer, ports) = tunnel_of(&signed, &site).unwrap();
        assert_eq!(ports, vec![8080], "port 0 and non-key targets are skipped");
        assert_eq!(peer_key_name(&peer).unwrap(), other.trim_end_matches('.'));
    }

    #[test]
    fn the_configurations_services_cannot_be_changed_from_the_cli() {
        let dir = std::env::temp_dir().join(format!("p2pdns-svc-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut table = ServiceTable::load(&dir, vec![spec("site", 80).check().unwrap()]);
        assert!(matches!(
            table.expose(spec("site", 80).check().unwrap()),
            Err(ServiceError::FromConfig { .. })
        ));
        assert!(matches!(
            table.unexpose("site.p2p", None),
            Err(ServiceError::FromConfig { .. })
        ));
        table.expose(spec("site", 81).check().unwrap()).unwrap();
        assert_eq!(table.unexpose("site.p2p", None).unwrap(), vec![81]);
        assert_eq!(
            table.unexpose("nothing.p2p", Some(1)).unwrap(),
            Vec::<u16>::new()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
