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
    NamingAnswer, answer_from,
    pins::{Pin, Pins},
    publisher::{PublishError, Publisher},
    resolver::{DhtAnswer, Empty, Resolved, Resolver},
};
use crate::{
    config::{NamingConfig, P2pConfig},
    p2p::NodeHandle,
    record::{NameRecord, record_name_for},
};

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
}

impl Dht {
    /// Sets up the DHT side on `node`, signing with `keypair`; loads the published names and
    /// the pins from `data_dir`.
    pub fn new(
        node: NodeHandle,
        keypair: ed25519::Keypair,
        data_dir: &Path,
        config: DhtConfig,
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
        }
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
            return self.resolver.answer(&own, qname, qtype, tld);
        }
        match self.resolver.resolve(&record_name).await {
            Some(DhtAnswer::Found(found)) => self.resolver.answer(&found.record, qname, qtype, tld),
            Some(DhtAnswer::Absent) => answer_from(&Empty, qname, qtype, tld),
            None => NamingAnswer::rcode(ResponseCode::ServFail),
        }
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

    /// Signs `records` under `name`, saves and publishes them ([`Publisher::publish`]).
    ///
    /// # Errors
    /// [`PublishError`] when the record is invalid, cannot be saved or the node refuses it.
    pub async fn publish(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        self.publisher.publish(name, records).await
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
