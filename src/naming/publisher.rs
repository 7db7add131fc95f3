//! The names this node publishes: signed with its key, kept in `names.toml` (its own module),
//! pushed to the DHT and republished by [`Publisher::run`] before replicas forget them or they
//! expire. Pushes are paced and read back (`super::pushes`): each push counts the other nodes
//! holding the record, and `run` also counts again when asked.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::StreamExt;
use hickory_proto::rr::{LowerName, Name, Record};
use libp2p::identity::ed25519;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use super::pushes::ReplicaCount;
use super::pushes::{PUT_SPACING, PUTS_IN_FLIGHT, PushQueue, ReadBack, put_and_count};
use crate::{
    p2p::{NodeError, NodeHandle},
    record::{self, ContentError, NameRecord, RecordError, key_of_name, unix_now},
    state::{LoadError, SaveError},
};

mod merge;
mod names;
mod names_file;

use names::{Change, Edit, Learned, Names};

/// Lifetime of the records this node signs.
const RECORD_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);
/// File holding the names this node publishes.
const NAMES_FILE: &str = "names.toml";
/// How often own names are pushed to the DHT again, plus up to the jitter.
const REPUBLISH_EVERY: Duration = Duration::from_secs(600);
const REPUBLISH_JITTER_MS: u64 = 120_000;
/// The first push after start, once peers had a moment to connect.
const FIRST_PUSH: Duration = Duration::from_secs(3);
/// Wait after the first peer is met, so its bootstrap can find others, before pushing.
const AFTER_JOINING: Duration = Duration::from_secs(2);
/// How long a count of replicas waits for the network, for all names together.
const REPLICA_COUNT_WAIT: Duration = Duration::from_secs(5);
/// Lookups a count of replicas runs at once (the DHT's capacity is for DNS first).
const REPLICA_COUNT_LOOKUPS: usize = 8;
/// How long a publish waits, from the request, for the network's newest record
/// (3 s of it at most) and for its own record to be put and read back before it answers (the
/// push goes on after).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(10);
/// How long a first publish of a name looks for what the network holds already.
const LEARN_WAIT: Duration = Duration::from_secs(2);
/// How long after [`LEARN_WAIT`] a look-up that found nothing by then may still run (one that
/// found replicas answers with them at [`LEARN_WAIT`]).
const LEARN_GRACE: Duration = Duration::from_secs(1);
/// When a push left a name with fewer holders than this while more peers answered, all names
/// are pushed again after [`PUSH_AGAIN_SOON`] rather than [`REPUBLISH_EVERY`].
const WANTED_HOLDERS: usize = 3;
const PUSH_AGAIN_SOON: Duration = Duration::from_secs(60);
/// The most names one key publishes: what storage nodes keep of one owner key by default
/// (`p2p.max_records_per_owner`, docs/PROTOCOL.md section 5 rule 10 and section 8.2). A name
/// beyond it would be dropped by every storage node without a word; more names are served as
/// names under fewer record sets (`www.site.p2p.` lives in the record of `site.p2p.`).
pub const MAX_NAMES_PER_KEY: usize = 100;

/// Errors when publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The name or the records cannot make a valid record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The records break a rule of docs/PROTOCOL.md section 10.1 (a CNAME beside other data,
    /// several TTLs in one RRset, a DNAME).
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The P2P node did not take the record (it is saved, and pushed again later).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The name is the key name of another key, which only that key can publish under.
    #[error("{0} is a key name of another key")]
    NotOurKeyName(String),
    /// `p2pdns.p2p` and the names under it are reserved (docs/PROTOCOL.md section 1): never
    /// looked up in the DHT, so never published.
    #[error(
        "{0} is reserved (docs/PROTOCOL.md section 1) and is never looked up; choose another name"
    )]
    Reserved(String),
    /// The names file could not be written (a full disk says so): nothing changed, in memory
    /// or on disk, and nothing was acknowledged.
    #[error(transparent)]
    Save(#[from] SaveError),
    /// The names file could not be read at start: it is left as it is, and no change is made
    /// until it is readable and the daemon restarted.
    #[error("names cannot change until the names file is readable again and the daemon restarted")]
    Unloaded(#[source] Arc<LoadError>),
    /// Republishing found the name unpublished (or published anew) since it was chosen.
    #[error("{0} changed while it was being re-signed")]
    Withdrawn(String),
    /// The daemon is shutting down: the change was not made.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// A new name while this key publishes [`MAX_NAMES_PER_KEY`] names already: storage
    /// nodes would drop its record (docs/PROTOCOL.md section 5 rule 10). Nothing changed.
    #[error(
        "{name} not published: this key publishes {limit} names already, the most storage nodes \
         keep for one key (docs/PROTOCOL.md section 5 rule 10); publish it as a name under one \
         of them (www.site.p2p lives in the record of site.p2p), or unpublish one first"
    )]
    TooManyNames {
        /// The name refused.
        name: String,
        /// [`MAX_NAMES_PER_KEY`].
        limit: usize,
    },
}

/// The owner of this node's names.
pub struct Publisher {
    node: NodeHandle,
    names: Arc<Names>,
    /// The last replica count of each name, by name: written by [`Publisher::run`] only,
    /// read by anyone at once.
    replicas: watch::Sender<BTreeMap<LowerName, ReplicaCount>>,
    /// Asks [`Publisher::run`] for a new count (asks made during one make one more).
    count_asked: Notify,
    /// Taken by a publish before its synced write: publishes started at once wait here as
    /// tasks, not each as a thread of the blocking pool waiting on [`Names`]' lock.
    writing: tokio::sync::Mutex<()>,
    /// Names waiting for their paced PUT ([`Publisher::run`] takes them).
    queue: PushQueue,
    /// The sequence number of each name's record that the user published in this run and
    /// whose read-back has not been seen yet: a newer record of this key found then is
    /// signed above (the user's wish is the newest); found at any other time, it is adopted.
    user_signed: Mutex<BTreeMap<LowerName, u64>>,
    /// The other key last warned about for each name found taken, whichever count found it
    /// (a push's read-back or a count asked by `status`/`names`): warned once per change.
    /// Bounded by the names published.
    taken: Mutex<BTreeMap<LowerName, [u8; 32]>>,
}

impl Publisher {
    /// The publisher signing with `keypair`, with the names saved in `data_dir`. A names file
    /// that cannot be read is left alone and turns publishing off ([`PublishError::Unloaded`]);
    /// entries of it that fail a resolver's checks are not published, and the file as it was
    /// is kept aside ([`crate::state::set_aside_damaged`]).
    pub fn load(node: NodeHandle, keypair: ed25519::Keypair, data_dir: &Path) -> Self {
        Self {
            node,
            names: Arc::new(Names::load(keypair, data_dir)),
            replicas: watch::Sender::new(BTreeMap::new()),
            count_asked: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
            queue: PushQueue::default(),
            user_signed: Mutex::new(BTreeMap::new()),
            taken: Mutex::new(BTreeMap::new()),
        }
    }

    /// The last count of the other nodes holding the record `seq` of `name`, if one was made
    /// since that record was signed. Never waits: counting is [`Publisher::count_replicas`].
    pub fn replicas(&self, name: &LowerName, seq: u64) -> Option<ReplicaCount> {
        self.replicas
            .borrow()
            .get(name)
            .filter(|count| count.seq == seq)
            .copied()
    }

    /// Asks for the replicas of every name to be counted again, in the background (within
    /// 5 s, a few lookups at a time); [`Publisher::replicas`] gives the counts when done.
    pub fn count_replicas(&self) {
        self.count_asked.notify_one();
    }

    /// This node's key name (`<key>.p2p.`).
    pub fn key_name(&self) -> Name {
        record::key_name(&self.names.keypair.public().to_bytes())
    }

    /// The unexpired record this node publishes under `name`, if any.
    pub fn get(&self, name: &LowerName) -> Option<Arc<NameRecord>> {
        self.names
            .lock()
            .get(name)
            .filter(|r| r.expires > unix_now())
            .cloned()
    }

    /// How many times this node's names changed since it started: an answer made from them
    /// before the count moved may no longer be true (the DNS front end's answer memo).
    pub fn changes(&self) -> u64 {
        self.names.changes()
    }

    /// The names this node publishes, expired ones included (republishing re-signs them).
    pub fn names(&self) -> Vec<Arc<NameRecord>> {
        self.names.lock().values().cloned().collect()
    }

    /// Signs `records` under `name` with this node's key in place of the records it held,
    /// saves them and queues them for the DHT, then waits for the push and its count until
    /// `answer_by` (callers give the request's time plus [`PUBLISH_WAIT`]) ([`Publisher::replicas`] gives it). Exact duplicates are dropped first
    /// ([`record::tidy`]). The sequence number rises with the clock and, for a name this node
    /// did not hold, goes above what the network holds from this key (another machine, lost
    /// files). When this returns `Ok`, the record is on disk (synced) and survives a crash.
    ///
    /// # Errors
    /// [`PublishError`]: an invalid name or record, records an authoritative server would not
    /// load together, another key's key name, a new name beyond [`MAX_NAMES_PER_KEY`], a
    /// failed save (then nothing changed), or the node not taking the record.
    pub async fn publish(
        &self,
        name: &Name,
        records: Vec<Record>,
        answer_by: Instant,
    ) -> Result<Arc<NameRecord>, PublishError> {
        self.publish_edit(name, Edit::Replace(record::tidy(records)?), answer_by)
            .await
    }

    /// Adds `records` to those `name` holds, as [`Publisher::publish`] publishes them: an RR
    /// present already is not added twice, and an added RR's TTL becomes its whole RRset's
    /// (RFC 2136 section 3.4.2.2). Adds made at once all count (the merge is made under the
    /// names' lock). A name this node holds no record of is added to the network's newest
    /// record of this key (the key moved here from another machine). Adding nothing new
    /// re-signs nothing.
    ///
    /// # Errors
    /// As [`Publisher::publish`]; the records together must pass [`record::tidy`].
    pub async fn add(
        &self,
        name: &Name,
        records: Vec<Record>,
        answer_by: Instant,
    ) -> Result<Arc<NameRecord>, PublishError> {
        self.publish_edit(name, Edit::Add(record::tidy(records)?), answer_by)
            .await
    }

    async fn publish_edit(
        &self,
        name: &Name,
        edit: Edit,
        answer_by: Instant,
    ) -> Result<Arc<NameRecord>, PublishError> {
        // The learning look-up and the PUT both count against `answer_by`: a dead peer among
        // the closest can hold each of them to its timeout.
        let learned = self.learn(name, answer_by).await;
        let signed = self.sign_and_push(name, edit, None, learned).await?;
        let key = LowerName::new(&signed.name);
        let mut counts = self.replicas.subscribe();
        let pushed = counts.wait_for(|c| c.get(&key).is_some_and(|c| c.seq >= signed.seq));
        let _ = tokio::time::timeout_at(answer_by, pushed).await;
        Ok(signed)
    }

    /// What a first publish of `name` here builds on: the network's newest record of this
    /// key, to sign above (docs/PROTOCOL.md section 3) and to add to; nothing when this node
    /// holds the name already or nothing is found within [`LEARN_WAIT`] (and before
    /// `answer_by`).
    async fn learn(&self, name: &Name, answer_by: Instant) -> Learned {
        if self.names.lock().contains_key(&LowerName::new(name)) {
            return Learned::default();
        }
        let newest = tokio::time::timeout_at(answer_by, self.network_newest(name));
        let Ok(Some(found)) = newest.await else {
            return Learned::default();
        };
        info!(name = %name, seq = found.seq, "the network holds this name from this key already; signing above it");
        Learned {
            min_seq: found.seq.saturating_add(1),
            base: Some(found.records),
        }
    }

    /// The newest record of `name` signed by this node's key that the network holds, looked
    /// up within [`LEARN_WAIT`].
    async fn network_newest(&self, name: &Name) -> Option<NameRecord> {
        let own = self.names.keypair.public().to_bytes();
        let lookup = self
            .node
            .lookup_within(name.to_lowercase(), usize::MAX, LEARN_WAIT);
        let found = tokio::time::timeout(LEARN_WAIT + LEARN_GRACE, lookup)
            .await
            .ok()?
            .ok()?;
        found
            .records
            .into_iter()
            .map(|(_, record)| record)
            .filter(|r| r.owner == own)
            .max_by_key(|r| r.seq)
    }

    /// Signs, saves and pushes the records `edit` makes; replaced records as they are: a
    /// record signed before the rules of [`record::tidy`] existed is re-signed unchanged
    /// rather than dropped (resolvers answer it by docs/PROTOCOL.md section 10.2).
    async fn sign_and_push(
        &self,
        name: &Name,
        edit: Edit,
        if_seq: Option<u64>,
        learned: Learned,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let name = name.to_lowercase();
        record::check_name(&name)?;
        if name.iter().next() == Some(record::RESERVED_LABEL.as_bytes()) {
            return Err(PublishError::Reserved(name.to_ascii()));
        }
        if let Some(key) = key_of_name(&name)
            && key != self.names.keypair.public().to_bytes()
        {
            return Err(PublishError::NotOurKeyName(name.to_ascii()));
        }
        let change = Change::Sign {
            name: name.clone(),
            edit,
            if_seq,
            learned,
        };
        let Some(signed) = self.apply(change).await? else {
            return Err(PublishError::Withdrawn(name.to_ascii()));
        };
        if if_seq.is_none() {
            // Before it is queued: its read-back must know it.
            lock(&self.user_signed).insert(LowerName::new(&name), signed.seq);
        }
        self.queue.push(LowerName::new(&name));
        info!(name = %name, seq = signed.seq, queued = self.queue.len(), "signed; queued for the DHT");
        Ok(signed)
    }

    /// Makes `change` ([`Names::apply`]) off the runtime's threads: signing and the synced
    /// write block.
    async fn apply(&self, change: Change) -> Result<Option<Arc<NameRecord>>, PublishError> {
        let names = self.names.clone();
        let writing = self.writing.lock().await;
        let applied = tokio::task::spawn_blocking(move || names.apply(change)).await;
        drop(writing);
        match applied {
            Ok(result) => result,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(PublishError::ShuttingDown),
            },
        }
    }

    /// Stops publishing `name`; replicas expire on their own. Returns whether it was published.
    /// When this returns, the names file no longer holds it.
    ///
    /// # Errors
    /// [`PublishError::Save`] when the names file cannot be written (the name stays).
    pub fn unpublish(&self, name: &Name) -> Result<bool, PublishError> {
        let key = LowerName::new(name);
        let removed = self.names.apply(Change::Remove(key.clone()))?;
        lock(&self.user_signed).remove(&key);
        Ok(removed.is_some())
    }

    /// Re-signs and pushes every own name whose record is past half its lifetime (or all of
    /// them, with `all`). Returns how many were pushed. A name of which the network holds a
    /// newer record of this key (another machine with the key published it since this node
    /// last did) takes that record instead of re-signing its stale content over it, and is
    /// re-signed only if that record is due too.
    pub async fn republish(&self, all: bool) -> usize {
        let now = unix_now();
        let lifetime = RECORD_LIFETIME.as_secs();
        // Also re-signed: a record expiring later than a new one would, signed under a clock
        // running ahead, which resolvers may refuse as too long-lived.
        let is_due = |r: &NameRecord| {
            let left = r.expires.saturating_sub(now);
            all || left < lifetime / 2 || left > lifetime
        };
        let due = self.names().into_iter().filter(|r| is_due(r));
        let looked_up: Vec<(Arc<NameRecord>, Option<NameRecord>)> = futures_util::stream::iter(due)
            .map(|record| async move {
                let newest = self.network_newest(&record.name).await;
                (record, newest)
            })
            .buffer_unordered(REPLICA_COUNT_LOOKUPS)
            .collect()
            .await;
        let mut pushed = 0;
        for (mut record, newest) in looked_up {
            if let Some(newer) = newest.filter(|n| n.seq > record.seq) {
                let Some(adopted) = self.adopt(newer).await else {
                    continue;
                };
                record = adopted;
                if !is_due(&record) {
                    pushed += 1;
                    continue;
                }
            }
            let records = Edit::Replace(record.records.clone());
            match self
                .sign_and_push(&record.name, records, Some(record.seq), Learned::default())
                .await
            {
                Ok(_) => pushed += 1,
                Err(PublishError::Withdrawn(_)) => {}
                Err(error) => warn!(
                    name = %record.name,
                    "republishing failed: {}",
                    crate::error::one_line(&error)
                ),
            }
        }
        pushed
    }

    /// Pushes this node's names into the DHT until `stop`: soon after start, again once the
    /// first peer is met (names published while alone reached nobody), then every few minutes,
    /// and a minute after a push that found too few holders; records past half their lifetime
    /// are re-signed first. The PUTs themselves are paced (`push_queued`).
    /// Counts replicas when asked.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(self.schedule(&stop), self.push_queued(&stop));
    }

    async fn schedule(&self, stop: &CancellationToken) {
        let mut first = true;
        let mut push_at = Instant::now() + FIRST_PUSH;
        let mut all_at = push_at;
        // The node says it joined for as long as it runs: once is news.
        let mut joined = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(push_at) => {}
                () = self.node.joined(), if !joined => {
                    joined = true;
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(AFTER_JOINING) => {}
                    }
                    all_at = Instant::now();
                }
                () = self.count_asked.notified() => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.count() => {}
                    }
                    continue;
                }
            }
            if Instant::now() >= all_at {
                let resigned = self.republish(false).await;
                self.push_all();
                if first || resigned > 0 {
                    debug!(
                        names = self.names().len(),
                        resigned, "own names queued for the DHT"
                    );
                }
                first = false;
                let jitter = Duration::from_millis(rand::random::<u64>() % REPUBLISH_JITTER_MS);
                all_at = Instant::now() + REPUBLISH_EVERY + jitter;
            } else {
                self.push_under_held();
            }
            push_at = all_at.min(Instant::now() + PUSH_AGAIN_SOON);
        }
    }

    /// Takes queued names one by one and puts each, [`PUT_SPACING`] apart and at most
    /// [`PUTS_IN_FLIGHT`] at once, until `stop`.
    async fn push_queued(self: &Arc<Self>, stop: &CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        let mut last: Option<Instant> = None;
        loop {
            let name = tokio::select! {
                () = stop.cancelled() => break,
                Some(ended) = running.join_next() => {
                    raise_panic(ended);
                    continue;
                }
                name = self.queue.next(), if running.len() < PUTS_IN_FLIGHT => name,
            };
            if let Some(last) = last {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(last + PUT_SPACING) => {}
                }
            }
            let Some(record) = self.get(&name) else {
                continue;
            };
            last = Some(Instant::now());
            let this = self.clone();
            running.spawn(async move { this.push(&record).await });
        }
        running.shutdown().await;
    }

    /// Puts `record`, counts its holders, and acts on what the count found.
    async fn push(&self, record: &NameRecord) {
        let (count, newest) = match put_and_count(&self.node, record).await {
            Ok(ReadBack { count, newest }) => (count, newest),
            Err(error) => {
                debug!(name = %record.name, %error, "pushing a name to the DHT failed; pushed again later");
                return;
            }
        };
        let name = LowerName::new(&record.name);
        self.replicas.send_modify(|counts| {
            counts.insert(name.clone(), count);
        });
        self.note_taken(&name, &count);
        let by_user = {
            let mut user_signed = lock(&self.user_signed);
            let by_user = user_signed.get(&name) == Some(&record.seq);
            if by_user {
                user_signed.remove(&name);
            }
            by_user
        };
        let Some(newest) = newest else {
            return;
        };
        if !by_user {
            self.adopt(newest).await;
            return;
        }
        warn!(
            name = %record.name,
            seq = record.seq,
            newer = newest.seq,
            "the network holds a newer record of this name from this key (another machine, or a clock ahead) than the one just published; signing above it"
        );
        let learned = Learned {
            min_seq: newest.seq.saturating_add(1),
            base: None,
        };
        let edit = Edit::Replace(record.records.clone());
        let resigned = self
            .sign_and_push(&record.name, edit, Some(record.seq), learned)
            .await;
        if let Err(error) = resigned {
            warn!(name = %record.name, "re-signing failed: {}", crate::error::one_line(&error));
        }
    }

    /// Takes `newer`, a record of this key signed on another machine, as the local copy of
    /// its name (saved), when it is newer than the one held: the key moved, and the last
    /// machine to publish wins rather than the one that republishes. Returns it when taken.
    async fn adopt(&self, newer: NameRecord) -> Option<Arc<NameRecord>> {
        let (name, seq) = (newer.name.clone(), newer.seq);
        match self.apply(Change::Adopt(Arc::new(newer))).await {
            Ok(Some(adopted)) => {
                warn!(
                    name = %name,
                    seq,
                    "the network holds a newer record of this name from this key, published by another machine with it; taking it as this node's copy"
                );
                self.queue.push(LowerName::new(&name));
                Some(adopted)
            }
            Ok(None) => None,
            Err(error) => {
                warn!(name = %name, "taking the network's newer record failed: {}", crate::error::one_line(&error));
                None
            }
        }
    }

    /// Queues every name whose last count found fewer than [`WANTED_HOLDERS`] holders while
    /// more peers answered: storage nodes dropped it (a full store, a rate limit) or missed it.
    fn push_under_held(&self) {
        let counts = self.replicas.borrow().clone();
        for record in self.names() {
            let name = LowerName::new(&record.name);
            if let Some(count) = counts.get(&name)
                && count.seq == record.seq
                && count.holders < WANTED_HOLDERS
                && usize::try_from(count.answered).unwrap_or(usize::MAX) > count.holders
            {
                self.queue.push(name);
            }
        }
    }

    /// Counts the other nodes holding each unexpired name's record, a few lookups at a time
    /// and within [`REPLICA_COUNT_WAIT`] in all: a name not counted in time keeps its last
    /// count (peers that never answer, behind NAT yet listed in the DHT, must not hold the
    /// others back).
    async fn count(&self) {
        let deadline = Instant::now() + REPLICA_COUNT_WAIT;
        let now = unix_now();
        let names: Vec<Arc<NameRecord>> = self
            .names()
            .into_iter()
            .filter(|r| r.expires > now)
            .collect();
        let counts: Vec<(LowerName, ReplicaCount)> = futures_util::stream::iter(names)
            .map(|record| async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let lookup = self
                    .node
                    .lookup_within(record.name.clone(), usize::MAX, left * 4 / 5);
                let found = tokio::time::timeout_at(deadline, lookup).await.ok()?.ok()?;
                let count = ReplicaCount::of(&record, &found);
                Some((LowerName::new(&record.name), count))
            })
            .buffer_unordered(REPLICA_COUNT_LOOKUPS)
            .filter_map(std::future::ready)
            .collect()
            .await;
        for (name, count) in &counts {
            self.note_taken(name, count);
        }
        let held = self.names.lock();
        lock(&self.taken).retain(|name, _| held.get(name).is_some());
        self.replicas.send_modify(|replicas| {
            replicas.retain(|name, count| held.get(name).is_some_and(|r| r.seq == count.seq));
            replicas.extend(counts);
        });
    }

    /// Warns when `count` finds `name` held by another key than the one last warned about.
    fn note_taken(&self, name: &LowerName, count: &ReplicaCount) {
        let Some(owner) = newly_taken(&mut lock(&self.taken), name, count) else {
            return;
        };
        warn!(
            %name,
            owner = %record::key_name(&owner),
            "another key holds this name: storage nodes keep its record and refuse this node's until it expires (see `p2pdns names`)"
        );
    }

    /// Queues every unexpired own name for the DHT as it is.
    fn push_all(&self) {
        for record in self.names() {
            if record.expires > unix_now() {
                self.queue.push(LowerName::new(&record.name));
            }
        }
    }
}

/// The key to warn about when `count` finds `name` taken by another key than the one in
/// `warned` (which is updated): once per change of holder, not at every republish or count. A
/// count that finds this node's record held and no other key's forgets the warning, so a
/// later taking is warned about again; one that found neither (peers slow to answer) does not.
fn newly_taken(
    warned: &mut BTreeMap<LowerName, [u8; 32]>,
    name: &LowerName,
    count: &ReplicaCount,
) -> Option<[u8; 32]> {
    match count.taken_by {
        Some(owner) if warned.get(name) != Some(&owner) => {
            warned.insert(name.clone(), owner);
            Some(owner)
        }
        None if count.holders > 0 => {
            warned.remove(name);
            None
        }
        _ => None,
    }
}

/// Locks `mutex`, whose every update is one map operation: a panic leaves nothing half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Raises again the panic of a push task (a bug); a cancelled one ended with the daemon.
fn raise_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && let Ok(panic) = error.try_into_panic()
    {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests;
