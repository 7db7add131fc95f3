//! [`Dht`]: the DHT side of naming as the DNS path and the control socket see it. It puts this
//! node's own names ([`Publisher`]) before what the network says ([`Resolver`], with its
//! [`Pins`]); each of those owns its own state.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use libp2p::identity::ed25519;
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    AnswerNote, Built, NamingAnswer, Origin, answer_from, nodata,
    pins::{Pin, Pins},
    positive,
    publisher::{PUBLISH_WAIT, PublishError, Publisher},
    resolver::{DhtAnswer, Empty, Resolved, Resolver},
    shares::Requester,
    soa_record,
};
use crate::{
    config::P2pConfig,
    metrics::DhtMetrics,
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
    pub(super) budget: Duration,
    /// Valid replicas wanted before a lookup answers early.
    pub(super) replicas: usize,
    /// Queries waiting on the network, shared with the forwarder (`dns.max_inflight`).
    pub(super) waiting: Arc<Semaphore>,
    /// Queries that may wait on lookups at once, shared fairly among clients: the smaller of
    /// `dns.max_inflight` and `p2p.max_lookups`.
    pub(super) lookups: usize,
    /// Pins kept at most (`p2p.max_pins`).
    pub(super) max_pins: usize,
    /// Lookups counted by outcome, time and requests, when metrics are on.
    pub(super) metrics: Option<Arc<DhtMetrics>>,
}

impl DhtConfig {
    /// The settings of `p2p` (lookup budget, replicas and capacity, pins kept); a query
    /// waiting on a DHT lookup holds one of `waiting`'s permits, the same the forwarder's
    /// queries take (`dns.max_inflight`, all of whose permits must be free now, bounds both
    /// together).
    pub fn new(p2p: &P2pConfig, waiting: Arc<Semaphore>) -> Self {
        Self {
            budget: Duration::from_millis(p2p.lookup_budget_ms),
            replicas: p2p.lookup_replicas,
            lookups: waiting.available_permits().min(p2p.max_lookups),
            waiting,
            max_pins: p2p.max_pins,
            metrics: None,
        }
    }

    /// Counts the lookups in `metrics`, when given.
    pub fn with_metrics(mut self, metrics: Option<Arc<DhtMetrics>>) -> Self {
        self.metrics = metrics;
        self
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
        let pins = Arc::new(Pins::load(data_dir, config.max_pins));
        let resolver = Resolver::new(node.clone(), pins, &config);
        let publisher = Publisher::load(node.clone(), keypair, data_dir);
        Self {
            node,
            resolver: Arc::new(resolver),
            publisher: Arc::new(publisher),
            tunnels,
        }
    }

    /// Runs the DHT side's tasks until `stop`: the republisher of this node's names
    /// ([`Publisher::run`]) and the saver of the pins ([`Pins::run`]).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let pins = self.resolver.pins().clone();
        tokio::join!(self.publisher.clone().run(stop.clone()), pins.run(stop));
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

    /// Answers a DNS question of `requester` for a name under `.p2p`: from this node's own
    /// record for the name, else from the DHT; SERVFAIL, with the reason, when the DHT gave no
    /// answer (`seen`: see [`answer_from`]).
    pub(crate) async fn answer(
        &self,
        qname: &Name,
        qtype: RecordType,
        tld: &Name,
        seen: &mut Vec<LowerName>,
        requester: Requester,
    ) -> Built {
        let Some(record_name) = record_name_for(&LowerName::new(qname)) else {
            return answer_from(&Empty, qname, qtype, tld, seen);
        };
        let record = match self.publisher.get(&LowerName::new(&record_name)) {
            Some(own) => own,
            None => match self.resolver.resolve(&record_name, requester).await {
                Ok(DhtAnswer::Found(found)) => found.record,
                Ok(DhtAnswer::Absent) => {
                    // The network says there is no such name: its answer, not this node's.
                    let mut absent = answer_from(&Empty, qname, qtype, tld, seen);
                    absent.origin = Origin::Network;
                    return absent;
                }
                Err(note) => return Built::done(NamingAnswer::failed(note), Origin::Network),
            },
        };
        match self.tunnel_answer(&record, qname, qtype, tld) {
            Some(answer) => {
                seen.push(LowerName::new(qname));
                Built::done(answer, Origin::Tunnel)
            }
            None => Resolver::answer(&record, qname, qtype, tld, seen),
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
            Err(TunnelError::Listen(_)) => NamingAnswer::failed(AnswerNote::TunnelListen),
            Err(error) => {
                tracing::warn!(name = %qname, "no local address for a tunnelled name: {}", crate::error::one_line(&error));
                NamingAnswer::failed(AnswerNote::TunnelAddress)
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
        match self.resolver.resolve(name, Requester::Operator).await {
            Ok(DhtAnswer::Found(found)) => Some(found),
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
        match self.resolver.resolve(set, Requester::Operator).await {
            Ok(DhtAnswer::Found(found)) if found.record.owner != own => Some(found.record.owner),
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
        self.publish_by(name, records, Instant::now() + PUBLISH_WAIT)
            .await
    }

    /// As [`Dht::publish`], answering by `answer_by` whether or not the push was counted
    /// (the push goes on after).
    ///
    /// # Errors
    /// As [`Dht::publish`].
    pub async fn publish_by(
        &self,
        name: &Name,
        records: Vec<Record>,
        answer_by: Instant,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let records = self.with_service_records(name, records);
        self.publisher.publish(name, records, answer_by).await
    }

    /// Adds `records` to those of `name` ([`Publisher::add`], RFC 2136 section 3.4.2.2),
    /// saves and publishes them; adds made at once all count.
    ///
    /// # Errors
    /// [`PublishError`] when the records are invalid, cannot be saved or the node refuses them.
    pub async fn add(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        self.add_by(name, records, Instant::now() + PUBLISH_WAIT)
            .await
    }

    /// As [`Dht::add`], answering by `answer_by` whether or not the push was counted (the
    /// push goes on after).
    ///
    /// # Errors
    /// As [`Dht::add`].
    pub async fn add_by(
        &self,
        name: &Name,
        records: Vec<Record>,
        answer_by: Instant,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let records = self.with_service_records(name, records);
        self.publisher.add(name, records, answer_by).await
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
        // Told, not polled: an idle daemon without peers must not wake up for this (issue
        // 14). After a minute alone the names are resolved anyway, from what the node has.
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tokio::time::timeout(Duration::from_secs(60), self.node.joined()) => {}
        }
        let tld = Name::from_ascii(format!("{}.", crate::record::TLD)).expect("a valid TLD");
        for name in tunnels.mapped_names() {
            let mut seen = Vec::new();
            tokio::select! {
                () = stop.cancelled() => return,
                _ = self.answer(&name, RecordType::A, &tld, &mut seen, Requester::Operator) => {}
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
        let answer_by = Instant::now() + PUBLISH_WAIT;
        self.publisher
            .publish(set, wanted, answer_by)
            .await
            .map(Some)
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
