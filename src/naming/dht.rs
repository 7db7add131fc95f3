//! [`Dht`]: the DHT side of naming as the DNS path and the control socket see it. It puts this
//! node's own names ([`Publisher`]) before what the network says ([`Resolver`], with its
//! [`Pins`]); each of those owns its own state.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, Record, RecordType},
};
use libp2p::identity::ed25519;

use super::{
    NamingAnswer, answer_from, nodata,
    pins::{Pin, Pins},
    positive,
    publisher::{PublishError, Publisher},
    resolver::{DhtAnswer, Empty, Resolved, Resolver},
    soa_record,
};
use crate::{
    config::{NamingConfig, P2pConfig},
    p2p::NodeHandle,
    record::{NameRecord, record_name_for, unix_now},
    tunnel::{TunnelError, Tunnels, service::tunnel_of},
};

/// Longest TTL of the local address a tunnelled name is answered with, in seconds
/// (docs/PROTOCOL.md section 9.1): short, so that a name that stops being tunnelled is seen
/// soon.
const TUNNEL_TTL: u32 = 10;

/// How the DHT side is set up, from `[p2p]` and `[naming]`.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Longest a DNS query waits for the DHT.
    budget: Duration,
    /// Valid replicas wanted before a lookup answers early.
    replicas: usize,
    /// Names (and their subdomains) whose answers may hold private addresses.
    allow_private: Vec<LowerName>,
}

impl DhtConfig {
    /// The settings of `p2p` (lookup budget and replicas) and `naming` (names allowed private
    /// answers; entries that are not domain names are skipped).
    pub fn new(p2p: &P2pConfig, naming: &NamingConfig) -> Self {
        Self {
            budget: Duration::from_millis(p2p.lookup_budget_ms),
            replicas: p2p.lookup_replicas,
            allow_private: naming
                .allow_private_answers
                .iter()
                .filter_map(|n| Name::from_ascii(n).ok())
                .map(|n| LowerName::new(&n))
                .collect(),
        }
    }
}

/// The DHT side of naming: own names first, then DHT lookups.
pub struct Dht {
    node: NodeHandle,
    resolver: Arc<Resolver>,
    publisher: Arc<Publisher>,
    tunnels: Option<Arc<Tunnels>>,
}

impl Dht {
    /// Sets up the DHT side on `node`, signing with `keypair`; loads the published names and
    /// the pins from `data_dir`.
    pub fn new(
        node: NodeHandle,
        keypair: ed25519::Keypair,
        data_dir: &Path,
        config: DhtConfig,
        tunnels: Option<Arc<Tunnels>>,
    ) -> Self {
        let pins = Pins::load(data_dir);
        let resolver = Resolver::new(
            node.clone(),
            pins,
            config.budget,
            config.replicas,
            config.allow_private,
        );
        let publisher = Publisher::load(node.clone(), keypair, data_dir);
        Self {
            node,
            resolver: Arc::new(resolver),
            publisher: Arc::new(publisher),
            tunnels,
        }
    }

    /// The tunnel subsystem, when it runs.
    pub fn tunnels(&self) -> Option<&Arc<Tunnels>> {
        self.tunnels.as_ref()
    }

    /// The P2P node the names travel through.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// The owner of this node's names, whose [`Publisher::run`] keeps them in the DHT.
    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    /// This node's key name (`<key>.p2p.`).
    pub fn key_name(&self) -> Name {
        self.publisher.key_name()
    }

    /// Answers a DNS question for a name under `.p2p`: from this node's own record for the
    /// name, else from the DHT; SERVFAIL when the DHT gave no answer within the budget.
    pub async fn lookup(&self, qname: &Name, qtype: RecordType, tld: &Name) -> NamingAnswer {
        let Some(record_name) = record_name_for(&LowerName::new(qname)) else {
            return answer_from(&Empty, qname, qtype, tld);
        };
        if let Some(own) = self.publisher.get(&LowerName::new(&record_name)) {
            return self
                .tunnel_answer(&own, qname, qtype, tld)
                .unwrap_or_else(|| self.resolver.answer(&own, qname, qtype, tld));
        }
        match self.resolver.resolve(&record_name).await {
            Some(DhtAnswer::Found(found)) => self
                .tunnel_answer(&found.record, qname, qtype, tld)
                .unwrap_or_else(|| self.resolver.answer(&found.record, qname, qtype, tld)),
            Some(DhtAnswer::Absent) => answer_from(&Empty, qname, qtype, tld),
            None => NamingAnswer::rcode(ResponseCode::ServFail),
        }
    }

    /// The answer for a tunnelled name (docs/PROTOCOL.md section 9.1): A is the local address
    /// the tunnels listen on, AAAA is NODATA; `None` when the name is not tunnelled, tunnels
    /// are off, or the question is of another type.
    fn tunnel_answer(
        &self,
        record: &NameRecord,
        qname: &Name,
        qtype: RecordType,
        tld: &Name,
    ) -> Option<NamingAnswer> {
        if !matches!(qtype, RecordType::A | RecordType::AAAA) {
            return None;
        }
        let tunnels = self.tunnels.as_ref()?;
        let (peer, ports) = tunnel_of(record, qname)?;
        if qtype == RecordType::AAAA {
            return Some(nodata(soa_record(tld)));
        }
        Some(match tunnels.map(qname, peer, &ports) {
            Ok(address) => {
                let left = u32::try_from(record.expires.saturating_sub(unix_now())).unwrap_or(0);
                let a = hickory_proto::rr::RData::A(address.into());
                positive(vec![Record::from_rdata(
                    qname.clone(),
                    TUNNEL_TTL.min(left),
                    a,
                )])
            }
            // Listening failures are logged where they happen, once each.
            Err(TunnelError::Listen(_)) => NamingAnswer {
                failure: Some(
                    "a tunnelled name whose port this machine cannot listen on; see p2pdns tunnels",
                ),
                ..NamingAnswer::rcode(ResponseCode::ServFail)
            },
            Err(error) => {
                tracing::warn!(name = %qname, "no local address for a tunnelled name: {}", crate::error::one_line(&error));
                NamingAnswer {
                    failure: Some("no local address for a tunnelled name; see the daemon's log"),
                    ..NamingAnswer::rcode(ResponseCode::ServFail)
                }
            }
        })
    }

    /// Resolves a DHT name (`site.p2p.`) for `p2pdns resolve`: the chosen record and its
    /// support; `None` when absent or not found in time.
    pub async fn resolve_record(&self, name: &Name) -> Option<Resolved> {
        if let Some(record) = self.publisher.get(&LowerName::new(name)) {
            return Some(Resolved {
                record,
                agreeing: 1,
            });
        }
        match self.resolver.resolve(name).await {
            Some(DhtAnswer::Found(found)) => Some(found),
            _ => None,
        }
    }

    /// The owner key of the record the network holds for `set` (`site.p2p.`), when another
    /// key than this node's owns it; `None` when the name is free, this node's, or not found
    /// within the lookup budget.
    pub async fn owned_elsewhere(&self, set: &Name) -> Option<[u8; 32]> {
        if self.publisher.get(&LowerName::new(set)).is_some() {
            return None;
        }
        let own = crate::record::key_of_name(&self.key_name())?;
        match self.resolver.resolve(set).await {
            Some(DhtAnswer::Found(found)) if found.record.owner != own => Some(found.record.owner),
            _ => None,
        }
    }

    /// Signs `records` under `name`, saves and publishes them ([`Publisher::publish`]).
    ///
    /// # Errors
    /// [`PublishError`] when the record is invalid, cannot be saved or the node refuses it.
    pub async fn publish(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let records = self.with_service_records(name, records);
        self.publisher.publish(name, records).await
    }

    /// `records` with the SRV records of this node's services under `set` in place of those
    /// of its own services it held: what the record says about tunnels always matches what
    /// this node serves (docs/PROTOCOL.md section 9.1).
    fn with_service_records(&self, set: &Name, mut records: Vec<Record>) -> Vec<Record> {
        let Some(tunnels) = &self.tunnels else {
            return records;
        };
        records.retain(|r| !tunnels.is_managed(r));
        for srv in tunnels.srv_records(set) {
            if !records.contains(&srv) {
                records.push(srv);
            }
        }
        records
    }

    /// At start: brings the records of this node's names in step with its services (the
    /// configuration's may have changed while it was stopped); then, once the node has met
    /// the network, resolves again the tunnelled names of earlier runs, so that their local
    /// addresses (which programs may still hold) are listened on before anyone asks.
    pub async fn start_tunnels(&self, stop: &tokio_util::sync::CancellationToken) {
        let Some(tunnels) = &self.tunnels else {
            return;
        };
        // Names with services now, and names that announced services that are gone.
        let mut sets = tunnels.record_sets();
        for own in self.own_names() {
            if own.records.iter().any(|r| tunnels.is_managed(r)) && !sets.contains(&own.name) {
                sets.push(own.name.clone());
            }
        }
        for set in sets {
            if let Err(error) = self.sync_services(&set).await {
                tracing::warn!(name = %set, "announcing the services of a name failed: {}", crate::error::one_line(&error));
            }
        }
        // Another task may take the node's "joined" notice first: look at the routing table.
        let joined = async {
            for _ in 0..240 {
                match self.node.status().await {
                    Ok(status) if status.routing_table_peers > 0 => return,
                    Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = joined => {}
        }
        let tld = Name::from_ascii(format!("{}.", crate::record::TLD)).expect("a valid TLD");
        for name in tunnels.mapped_names() {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = self.lookup(&name, RecordType::A, &tld) => {}
            }
        }
    }

    /// Re-signs the record set `set` (`site.p2p.`) so that it announces this node's services
    /// under it as they are now; a set that holds no record and no service is left alone.
    /// Returns the record published, if one was.
    ///
    /// # Errors
    /// [`PublishError`] when the record is invalid, cannot be saved or the node refuses it.
    pub async fn sync_services(&self, set: &Name) -> Result<Option<Arc<NameRecord>>, PublishError> {
        let own = self.publisher.get(&LowerName::new(set));
        let current = own.as_ref().map(|r| r.records.clone()).unwrap_or_default();
        let wanted = self.with_service_records(set, current.clone());
        if own.is_some() && wanted == current {
            return Ok(None);
        }
        if own.is_none() && wanted.is_empty() {
            return Ok(None);
        }
        self.publisher.publish(set, wanted).await.map(Some)
    }

    /// Stops publishing `name`. Returns whether it was published.
    ///
    /// # Errors
    /// [`PublishError::Save`] when the names file cannot be written.
    pub fn unpublish(&self, name: &Name) -> Result<bool, PublishError> {
        self.publisher.unpublish(name)
    }

    /// The names this node publishes.
    pub fn own_names(&self) -> Vec<Arc<NameRecord>> {
        self.publisher.names()
    }

    /// The pinned owners, by name.
    pub fn pins(&self) -> BTreeMap<String, Pin> {
        self.resolver.pins().all()
    }

    /// Forgets the pin of `name` (and the record cached under it). Returns whether there was
    /// one.
    ///
    /// # Errors
    /// The pins file could not be written.
    pub fn remove_pin(&self, name: &Name) -> std::io::Result<bool> {
        self.resolver.remove_pin(name)
    }
}
