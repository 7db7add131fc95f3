//! The request handler: protocol checks every query passes (RFC 6891, 8482, 8906) and routing
//! to the naming subsystem or the forwarder; [`super::response`] builds and sends the reply.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use hickory_proto::{
    op::{OpCode, ResponseCode},
    rr::{
        DNSClass, LowerName, Name, RData, Record, RecordType,
        rdata::{HINFO, TXT},
    },
};
use hickory_server::{
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
};
use ipnet::IpNet;
use tokio::time::Instant;
use tracing::debug;

use super::{
    cache::{CacheKey, CachedAnswer},
    forwarder::{Forwarder, Outcome},
    memo::{AnswerMemo, Memorable, NAMING_HOLD, Reuse},
    response::{self, Ede, Reply},
    special::SpecialUse,
};
use crate::{
    config::DnsConfig,
    metrics::{DnsMetrics, Source},
    naming::{AnswerNote, Naming, NamingAnswer, Requester, remove_private},
};

/// TTL of the synthesized answer to ANY queries (RFC 8482 section 4.2).
const ANY_TTL: u32 = 3600;
/// How many more queries may complete one incomplete upstream alias chain (unbound restarts
/// a query at most 8 to 11 times for CNAMEs, depending on version).
const MAX_CHAIN_HOPS: usize = 8;

/// Answers every DNS query the server receives; clones share one state.
#[derive(Clone)]
pub struct Handler(Arc<Responder>);

/// The state behind [`Handler`]. Pipelined TCP queries are answered concurrently by the
/// server (RFC 7766 section 6.2.1.1), each in a task of its own.
struct Responder {
    forwarder: Arc<Forwarder>,
    naming: Arc<Naming>,
    /// Special-use names answered here (localhost, invalid...): never forwarded.
    special: SpecialUse,
    /// Client networks answered; others get REFUSED.
    allow: Vec<IpNet>,
    udp_payload: u16,
    chaos: Option<Chaos>,
    /// Queries by source and RCODE, and answer times, when metrics are on.
    metrics: Option<Arc<DnsMetrics>>,
    /// Queries being answered right now, so shutdown can let them finish.
    in_flight: Arc<AtomicUsize>,
    /// Encoded replies to plain UDP queries answered from the cache, sent again as bytes.
    memo: AnswerMemo,
}

/// Answers for CHAOS-class TXT queries.
struct Chaos {
    version: String,
    identity: String,
}

impl Handler {
    /// A handler routing names under the naming TLDs to `naming` and the rest to `forwarder`,
    /// with the ACL, UDP size limit and CHAOS answers of `config`.
    pub fn new(forwarder: Arc<Forwarder>, naming: Arc<Naming>, config: &DnsConfig) -> Self {
        Self::with_metrics(forwarder, naming, config, None)
    }

    /// [`Handler::new`], counting every answer in `metrics` when it is given.
    pub fn with_metrics(
        forwarder: Arc<Forwarder>,
        naming: Arc<Naming>,
        config: &DnsConfig,
        metrics: Option<Arc<DnsMetrics>>,
    ) -> Self {
        Self(Arc::new(Responder {
            forwarder,
            naming,
            special: SpecialUse::new(&config.forward_special),
            allow: config.allow.clone(),
            udp_payload: config.udp_payload,
            chaos: config.chaos.then(|| Chaos {
                version: format!("p2pdns {}", env!("CARGO_PKG_VERSION")),
                identity: hostname(),
            }),
            metrics,
            in_flight: Arc::new(AtomicUsize::new(0)),
            memo: AnswerMemo::default(),
        }))
    }

    /// Writes into `out` the reply to the UDP query `query` from `client` if the memo holds
    /// one ([`super::memo`]: the query is byte for byte one answered before from what still
    /// holds: a fresh cache entry, or a `.p2p` answer within its hold); returns whether it did. Everything else takes [`Handler::answer`].
    pub fn answer_from_memo(&self, query: &[u8], client: IpAddr, out: &mut Vec<u8>) -> bool {
        let responder = &self.0;
        if !responder.allowed(client) {
            return false;
        }
        let now = Instant::now();
        let Some(source) = responder
            .memo
            .answer(query, now, responder.generation(), out)
        else {
            return false;
        };
        if let Some(metrics) = &responder.metrics {
            metrics.answered_from_memo(source, out, now.elapsed());
        }
        true
    }

    /// Counts a reply of `rcode` made before the handler could see the query (FORMERR to one
    /// that does not parse), as answered here.
    pub fn count_unparsed(&self, rcode: ResponseCode) {
        if let Some(metrics) = &self.0.metrics {
            metrics.answered(Source::Local, rcode, std::time::Duration::ZERO);
        }
    }

    /// Remembers `reply`, the encoding of the reply to the UDP query `query` that
    /// [`Handler::answer`] said may be sent again as `made` says.
    pub fn remember(&self, query: &[u8], reply: &[u8], made: Memorable) {
        self.0.memo.remember(query, reply, made);
    }

    /// Answers `request` through `response_handle`, as [`RequestHandler::handle_request`]
    /// does; also says how the reply's encoding may be sent again, if it may, and the
    /// generation of the answers' sources it was made at (see [`Handler::remember`]).
    pub async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> (ResponseInfo, Option<Memorable>) {
        self.0.respond(request, response_handle).await
    }

    /// Counts the queries being answered.
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        self.0.in_flight.clone()
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0.respond(request, response_handle).await.0
    }
}

impl Responder {
    /// A count that moves whenever what answers are made from changes in a way the answer
    /// memo must know: the cache emptied, or this node's own names changed.
    fn generation(&self) -> u64 {
        self.forwarder
            .cache()
            .generation()
            .wrapping_add(self.naming.changes())
    }

    fn allowed(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.iter().any(|net| net.contains(&client))
    }

    /// The reply to `request`: refusals and protocol errors first, then the answer from
    /// wherever the name is served.
    async fn reply(&self, request: &Request) -> Reply {
        if let Some(refusal) = self.check(request) {
            return refusal;
        }
        let query = &request.queries.queries()[0];
        let qname = query.original().name();
        let qtype = query.query_type();
        match query.query_class() {
            DNSClass::IN => {}
            DNSClass::CH => return self.chaos(query.name(), qname, qtype),
            _ => return Reply::rcode(ResponseCode::Refused),
        }
        match qtype {
            RecordType::AXFR | RecordType::IXFR => {
                return Reply::rcode(ResponseCode::Refused)
                    .with_ede(Ede::Prohibited, "zone transfers are not offered");
            }
            RecordType::OPT => return Reply::rcode(ResponseCode::FormErr),
            _ => {}
        }
        if let Some(answer) = self.special.answer(query.name(), qname, qtype) {
            return Reply::from_naming(answer).from_source(Source::Local);
        }
        if self.naming.is_local(query.name()) {
            let mut answer = self
                .naming
                .lookup_for(qname, qtype, request.src().ip())
                .await;
            let completed_elsewhere = self.follow_cname_out(&mut answer, qtype, request).await;
            let reuse = (!completed_elsewhere).then(|| Reuse::held_for(NAMING_HOLD));
            return Reply::from_naming(answer).reusable(reuse);
        }
        if is_doh_canary(query.name()) {
            // Firefox turns its own DNS-over-HTTPS on by default only where this name resolves;
            // NXDOMAIN keeps it on the system resolver, which is what resolves .p2p names.
            return Reply::rcode(ResponseCode::NXDomain).with_ede(
                Ede::Filtered,
                "the local resolver asks applications not to bypass it with DNS-over-HTTPS",
            );
        }
        if qtype == RecordType::ANY {
            // RFC 8482: a small synthesized answer instead of everything, which keeps ANY from
            // being an amplifier and costs the upstreams nothing.
            let hinfo = HINFO::new("RFC8482".to_owned(), String::new());
            let mut reply = Reply::rcode(ResponseCode::NoError);
            reply.push_answer(Record::from_rdata(
                qname.clone(),
                ANY_TTL,
                RData::HINFO(hinfo),
            ));
            return reply;
        }
        self.forward(request, query.name(), qname, qtype).await
    }

    /// The checks before a query is routed: the client ACL, EDNS version, opcode, one
    /// question, and our own upstream queries come back (a forwarding loop).
    fn check(&self, request: &Request) -> Option<Reply> {
        // Checked here rather than by hickory's ACL so that refusals get EDNS like any reply.
        if !self.allowed(request.src().ip()) {
            return Some(
                Reply::rcode(ResponseCode::Refused)
                    .with_ede(Ede::Prohibited, "client not in dns.allow"),
            );
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 section 6.1.3: BADVERS, answered with our highest version, 0.
            return Some(Reply::rcode(ResponseCode::BADVERS));
        }
        if request.metadata.op_code != OpCode::Query {
            return Some(Reply::rcode(ResponseCode::NotImp));
        }
        if request.queries.queries().len() != 1 {
            return Some(Reply::rcode(ResponseCode::FormErr));
        }
        if self
            .forwarder
            .detect_loop(request.queries.queries()[0].name())
        {
            return Some(
                Reply::rcode(ResponseCode::Refused).with_ede(Ede::Prohibited, "forwarding loop"),
            );
        }
        None
    }

    /// The forwarder's answer to an ICANN name (`name` is `qname` in lower case).
    async fn forward(
        &self,
        request: &Request,
        name: &LowerName,
        qname: &Name,
        qtype: RecordType,
    ) -> Reply {
        let mut reply = self
            .ask_forwarder(name.clone(), qname, qtype, request)
            .await;
        self.complete_chain(&mut reply, qtype, request).await;
        reply
    }

    /// The forwarder's answer (cached or fresh) for `qtype` at `qname` (`name` in lower
    /// case), with the header bits `request` asked for; SERVFAIL with its reason when no
    /// upstream answered.
    async fn ask_forwarder(
        &self,
        name: LowerName,
        qname: &Name,
        qtype: RecordType,
        request: &Request,
    ) -> Reply {
        let key = CacheKey {
            name,
            qtype,
            dnssec_ok: dnssec_ok(request),
            checking_disabled: checking_disabled(request),
        };
        let client = Requester::dns(request.src().ip());
        let outcome = self.forwarder.resolve(key, client).await;
        let source = outcome.source();
        match outcome {
            Outcome::Answer {
                answer,
                age,
                stale,
                reuse,
                ..
            } => {
                let stale_ttl = stale.then(|| self.forwarder.stale_ttl());
                let ad_asked = dnssec_ok(request) || request.metadata.authentic_data;
                Reply::forwarded(&answer, age, stale_ttl, qname, ad_asked)
                    .reusable(reuse)
                    .from_source(source)
            }
            Outcome::Failed(error) => {
                debug!(name = %qname, %qtype, %error, "answering SERVFAIL");
                Reply::forward_failed(error)
            }
        }
    }

    /// Completes an upstream answer whose alias chain stops short of the data (`www.example
    /// CNAME cdn.example.net.` and nothing for the target) by asking for the target, up to
    /// [`MAX_CHAIN_HOPS`] times, as a recursive resolver does (RFC 1034 section 4.3.2 step
    /// 3a). What an upstream says about names served here (`.p2p`, `localhost.`) is dropped
    /// and answered here instead, as unbound does with its local zones; a target that fails
    /// fails the answer.
    async fn complete_chain(&self, reply: &mut Reply, qtype: RecordType, request: &Request) {
        let served_here = |name: &Name| {
            let name = LowerName::new(name);
            self.naming.is_local(&name) || self.special.covers(&name)
        };
        if reply.cut_chain_at(served_here) {
            debug!("upstream records for names served here dropped from an alias chain");
        }
        for _ in 0..MAX_CHAIN_HOPS {
            let Some(target) = reply.dangling_alias(qtype) else {
                return;
            };
            let tail = self.answer_target(&target, qtype, request).await;
            reply.extend_chain(tail);
        }
    }

    /// The answer for `target`, the end of an alias chain from upstream: from the special-use
    /// table, the naming subsystem or the forwarder, wherever `target` is served.
    async fn answer_target(&self, target: &Name, qtype: RecordType, request: &Request) -> Reply {
        let name = LowerName::new(target);
        if let Some(special) = self.special.answer(&name, target, qtype) {
            return Reply::from_naming(special);
        }
        if self.naming.is_local(&name) {
            let client = request.src().ip();
            let mut answer = self.naming.lookup_for(target, qtype, client).await;
            self.follow_cname_out(&mut answer, qtype, request).await;
            return Reply::from_naming(answer);
        }
        self.ask_forwarder(name, target, qtype, request).await
    }

    /// A `.p2p` answer that ends in a CNAME to an ICANN name (`site.p2p CNAME
    /// example.github.io.`) is completed through the forwarder when the client asked for
    /// recursion, so stub resolvers that do not chase CNAMEs themselves get addresses
    /// (RFC 1034 section 4.3.2 step 3a; docs/PROTOCOL.md section 10.3). Returns whether the
    /// answer was completed so (from the special-use table or the forwarder).
    async fn follow_cname_out(
        &self,
        answer: &mut NamingAnswer,
        qtype: RecordType,
        request: &Request,
    ) -> bool {
        if !request.metadata.recursion_desired
            || answer.rcode != ResponseCode::NoError
            || matches!(qtype, RecordType::CNAME | RecordType::ANY)
        {
            return false;
        }
        let Some(RData::CNAME(target)) = answer.answers.last().map(|r| &r.data) else {
            return false;
        };
        let target_name = target.0.clone();
        let target = LowerName::new(&target_name);
        if self.naming.is_local(&target) {
            return false;
        }
        if let Some(special) = self.special.answer(&target, &target_name, qtype) {
            // localhost., onion., invalid.: answered here as if asked directly, never
            // forwarded (README "Special-use names").
            append_records(answer, special.rcode, special.answers, special.authorities);
            return true;
        }
        let key = CacheKey {
            name: target,
            qtype,
            dnssec_ok: dnssec_ok(request),
            checking_disabled: checking_disabled(request),
        };
        let client = Requester::dns(request.src().ip());
        match self.forwarder.resolve(key, client).await {
            Outcome::Answer {
                answer: tail, age, ..
            } => append_tail(answer, &tail, age),
            Outcome::Failed(error) => {
                debug!(%error, "the ICANN target of a .p2p CNAME did not resolve");
                *answer = NamingAnswer::failed(AnswerNote::TargetFailed);
            }
        }
        true
    }

    /// CHAOS TXT: version.bind and version.server, id.server and hostname.bind.
    fn chaos(&self, name: &LowerName, qname: &Name, qtype: RecordType) -> Reply {
        let Some(chaos) = &self.chaos else {
            return Reply::rcode(ResponseCode::Refused);
        };
        let text = match name.to_string().as_str() {
            "version.bind." | "version.server." => &chaos.version,
            "id.server." | "hostname.bind." => &chaos.identity,
            _ => return Reply::rcode(ResponseCode::Refused),
        };
        let mut reply = Reply::rcode(ResponseCode::NoError);
        reply.authoritative = true;
        if matches!(qtype, RecordType::TXT | RecordType::ANY) {
            let mut record =
                Record::from_rdata(qname.clone(), 0, RData::TXT(TXT::new(vec![text.clone()])));
            record.dns_class = DNSClass::CH;
            reply.push_answer(record);
        }
        reply
    }

    /// Answers `request` through `response_handle`; says how the reply may be reused.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> (ResponseInfo, Option<Memorable>) {
        let _counted = InFlight::enter(&self.in_flight);
        let started = self.metrics.as_ref().map(|_| Instant::now());
        // Read before the answer is made: a change meanwhile makes it stale at once.
        let generation = self.generation();
        let reply = self.reply(request).await;
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            metrics.answered(reply.source, reply.response_code(), started.elapsed());
        }
        let reuse = reply.reuse().map(|reuse| Memorable {
            reuse,
            generation,
            source: reply.source,
        });
        let info = response::send(request, reply, response_handle, self.udp_payload).await;
        (info, reuse)
    }
}

/// Appends the upstream's answer for the ICANN target of a `.p2p` CNAME chain (stored `age`
/// seconds ago) to `answer`, which takes its RCODE and authority section (the target zone's
/// SOA when it is negative: RFC 2308 sections 2.1 and 2.2, RFC 6604). The answer is no longer
/// authoritative, and its addresses pass the DNS-rebinding filter when the chain came from the
/// network. An upstream that failed the name fails the answer.
fn append_tail(answer: &mut NamingAnswer, tail: &CachedAnswer, age: u32) {
    if !matches!(tail.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        *answer = NamingAnswer::failed(AnswerNote::TargetFailed);
        return;
    }
    let aged = |records: &[Record]| -> Vec<Record> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.ttl = r.ttl.saturating_sub(age);
                r
            })
            .collect()
    };
    append_records(
        answer,
        tail.rcode,
        aged(&tail.answers),
        aged(&tail.authorities),
    );
}

/// Appends the answer for the target of `answer`'s alias chain, which was not served by the
/// naming subsystem: `answer` takes its RCODE and authorities, loses AA, and the appended
/// addresses pass the DNS-rebinding filter when the chain came from the network.
fn append_records(
    answer: &mut NamingAnswer,
    rcode: ResponseCode,
    mut records: Vec<Record>,
    authorities: Vec<Record>,
) {
    if answer.screen_tail && remove_private(&mut records) {
        answer.note = Some(AnswerNote::PrivateRemoved);
    }
    answer.answers.extend(records);
    answer.rcode = rcode;
    answer.authorities = authorities;
    answer.authoritative = false;
}

/// Did the client set the DO bit (RFC 3225)?
fn dnssec_ok(request: &Request) -> bool {
    request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok)
}

/// Did the client set the CD bit (RFC 4035 section 3.2.2): it validates, or wants the data
/// even where validation fails?
fn checking_disabled(request: &Request) -> bool {
    request.metadata.checking_disabled
}

/// Holds one count in the in-flight counter while a query is answered.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Firefox's canary domain (`use-application-dns.net`, and names under it): a network that
/// answers NXDOMAIN for it asks Firefox not to enable DNS-over-HTTPS by itself.
fn is_doh_canary(name: &LowerName) -> bool {
    static CANARY: std::sync::LazyLock<LowerName> = std::sync::LazyLock::new(|| {
        LowerName::new(&Name::from_ascii("use-application-dns.net.").expect("a valid name"))
    });
    CANARY.zone_of(name)
}

/// The machine's host name, for CHAOS `id.server`.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
