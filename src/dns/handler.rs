//! The request handler: protocol checks every query passes (RFC 6891, 8482, 8906), routing to
//! the naming subsystem or the forwarder, and building the reply (EDNS, EDE, truncation).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode},
    rr::{
        DNSClass, LowerName, Name, RData, Record, RecordType,
        rdata::{HINFO, TXT, opt::EdnsOption},
    },
    serialize::binary::BinEncoder,
};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use ipnet::IpNet;
use tracing::debug;

use super::{
    cache::CacheKey,
    forwarder::{ForwardError, Forwarder, Outcome},
};
use crate::{config::DnsConfig, naming::Naming};

/// EDNS option code of Extended DNS Errors (RFC 8914).
const EDE_OPTION: u16 = 15;
/// Room left for the header, question and OPT when judging from a size estimate whether an
/// answer fits; closer calls are measured exactly.
const SIZE_MARGIN: usize = 128;
/// TTL of the synthesized answer to ANY queries (RFC 8482 section 4.2).
const ANY_TTL: u32 = 3600;

/// Extended DNS Error codes we send (RFC 8914 section 4).
#[derive(Debug, Clone, Copy)]
enum Ede {
    Other = 0,
    StaleAnswer = 3,
    Filtered = 17,
    Prohibited = 18,
    NoReachableAuthority = 22,
}

/// A reply before encoding.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    ede: Option<(Ede, &'static str)>,
    /// Estimated encoded size, when known.
    size_hint: Option<usize>,
}

impl Reply {
    fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            ede: None,
            size_hint: Some(0),
        }
    }

    fn with_ede(mut self, ede: Ede, text: &'static str) -> Self {
        self.ede = Some((ede, text));
        self
    }
}

/// Answers every DNS query the server receives.
pub struct Handler(Arc<Responder>);

/// The state behind [`Handler`], shared with the tasks that answer pipelined TCP queries.
struct Responder {
    forwarder: Arc<Forwarder>,
    naming: Arc<Naming>,
    /// Client networks answered; others get REFUSED.
    allow: Vec<IpNet>,
    udp_payload: u16,
    chaos: Option<Chaos>,
    /// Queries being answered right now, so shutdown can let them finish.
    in_flight: Arc<AtomicUsize>,
}

/// Answers for CHAOS-class TXT queries.
struct Chaos {
    version: String,
    identity: String,
}

impl Handler {
    pub fn new(forwarder: Arc<Forwarder>, naming: Arc<Naming>, config: &DnsConfig) -> Self {
        Self(Arc::new(Responder {
            forwarder,
            naming,
            allow: config.allow.clone(),
            udp_payload: config.udp_payload,
            chaos: config.chaos.then(|| Chaos {
                version: format!("p2pdns {}", env!("CARGO_PKG_VERSION")),
                identity: hostname(),
            }),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }))
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
        if request.protocol() == Protocol::Tcp {
            // hickory reads the next query on a connection only after this returns. Answer in
            // a task of its own so one slow upstream does not hold up the queries pipelined
            // behind it (RFC 7766 section 6.2.1.1). The task count is bounded by
            // dns.max_inflight: only queries waiting upstream take long.
            let owned = Request::from_bytes(
                request.as_slice().to_vec(),
                request.src(),
                request.protocol(),
            );
            if let Ok(owned) = owned {
                let responder = self.0.clone();
                tokio::spawn(async move { responder.respond(&owned, response_handle).await });
                return ResponseInfo::from(Header {
                    metadata: Metadata::response_from_request(&request.metadata),
                    counts: HeaderCounts::default(),
                });
            }
        }
        self.0.respond(request, response_handle).await
    }
}

impl Responder {
    fn allowed(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.iter().any(|net| net.contains(&client))
    }

    async fn reply(&self, request: &Request) -> Reply {
        // Checked here rather than by hickory's ACL so that refusals get EDNS like any reply.
        if !self.allowed(request.src().ip()) {
            return Reply::rcode(ResponseCode::Refused)
                .with_ede(Ede::Prohibited, "client not in dns.allow");
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 section 6.1.3: BADVERS, answered with our highest version, 0.
            return Reply::rcode(ResponseCode::BADVERS);
        }
        if request.metadata.op_code != OpCode::Query {
            return Reply::rcode(ResponseCode::NotImp);
        }
        let queries = request.queries.queries();
        if queries.len() != 1 {
            return Reply::rcode(ResponseCode::FormErr);
        }
        if self.forwarder.detect_loop(request.edns.as_ref()) {
            return Reply::rcode(ResponseCode::Refused)
                .with_ede(Ede::Prohibited, "forwarding loop");
        }
        let query = &queries[0];
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

        if self.naming.is_local(query.name()) {
            let mut answer = self.naming.lookup(qname, qtype).await;
            self.follow_cname_out(&mut answer.answers, qtype, request)
                .await;
            let ede = (answer.rcode == ResponseCode::ServFail).then_some((
                Ede::NoReachableAuthority,
                "no answer from the p2p network in time; try again",
            ));
            return Reply {
                rcode: answer.rcode,
                authoritative: answer.rcode != ResponseCode::ServFail,
                answers: answer.answers,
                authorities: answer.authorities,
                additionals: Vec::new(),
                ede,
                size_hint: None,
            };
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
            let record = Record::from_rdata(qname.clone(), ANY_TTL, RData::HINFO(hinfo));
            let mut reply = Reply::rcode(ResponseCode::NoError);
            reply.answers.push(record);
            return reply;
        }

        let key = CacheKey {
            name: query.name().clone(),
            qtype,
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        };
        match self.forwarder.resolve(key).await {
            Outcome::Answer { answer, age, stale } => {
                let ttl = |record: &Record| {
                    if stale {
                        self.forwarder.stale_ttl()
                    } else {
                        record.ttl.saturating_sub(age)
                    }
                };
                let copy = |records: &[Record]| -> Vec<Record> {
                    records
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.ttl = ttl(&r);
                            // Owner names that are the question copy its letter case.
                            if r.name == *qname {
                                r.name = qname.clone();
                            }
                            r
                        })
                        .collect()
                };
                Reply {
                    rcode: answer.rcode,
                    authoritative: false,
                    answers: copy(&answer.answers),
                    authorities: copy(&answer.authorities),
                    additionals: copy(&answer.additionals),
                    ede: stale.then_some((Ede::StaleAnswer, "")),
                    size_hint: Some(answer.wire_len),
                }
            }
            Outcome::Failed(error) => {
                debug!(name = %qname, %qtype, %error, "answering SERVFAIL");
                let (ede, text) = match error {
                    ForwardError::NoUpstreams => {
                        (Ede::NoReachableAuthority, "no upstream DNS server")
                    }
                    ForwardError::Timeout => {
                        (Ede::NoReachableAuthority, "upstreams did not answer")
                    }
                    ForwardError::Upstream(_) => (Ede::Other, "upstreams failed the query"),
                    ForwardError::Overloaded => (Ede::Other, "too many queries in flight"),
                };
                Reply::rcode(ResponseCode::ServFail).with_ede(ede, text)
            }
        }
    }

    /// A `.p2p` answer that ends in a CNAME to an ICANN name (`site.p2p CNAME
    /// example.github.io.`) is completed through the forwarder, so stub resolvers that do not
    /// chase CNAMEs themselves get addresses.
    async fn follow_cname_out(
        &self,
        answers: &mut Vec<Record>,
        qtype: RecordType,
        request: &Request,
    ) {
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
            return;
        }
        let Some(RData::CNAME(target)) = answers.last().map(|r| &r.data) else {
            return;
        };
        let target = LowerName::new(&target.0);
        if self.naming.is_local(&target) {
            return;
        }
        let key = CacheKey {
            name: target,
            qtype,
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        };
        if let Outcome::Answer { answer, age, .. } = self.forwarder.resolve(key).await
            && answer.rcode == ResponseCode::NoError
        {
            answers.extend(answer.answers.iter().map(|r| {
                let mut r = r.clone();
                r.ttl = r.ttl.saturating_sub(age);
                r
            }));
        }
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
            reply.answers.push(record);
        }
        reply
    }

    /// Answers `request` through `response_handle`.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let _counted = InFlight::enter(&self.in_flight);
        let reply = self.reply(request).await;

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        metadata.authoritative = reply.authoritative;
        metadata.response_code = reply.rcode;

        // RFC 6891: answer EDNS with EDNS (version 0, our size), echo DO (RFC 3225), and send
        // no option the client did not ask for except an Extended DNS Error.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(self.udp_payload);
            edns.set_version(0);
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            if let Some((code, text)) = reply.ede {
                let mut data = (code as u16).to_be_bytes().to_vec();
                data.extend_from_slice(text.as_bytes());
                edns.options_mut()
                    .insert(EdnsOption::Unknown(EDE_OPTION, data));
            }
            edns
        });

        let limit = match request.protocol() {
            Protocol::Udp => match &request.edns {
                Some(req) => usize::from(req.max_payload().clamp(512, self.udp_payload)),
                None => 512,
            },
            _ => usize::from(u16::MAX),
        };
        let fits = match reply.size_hint {
            Some(hint) if hint + SIZE_MARGIN <= limit => true,
            _ => encoded_len(request, &metadata, &reply, edns.as_ref()) <= limit,
        };

        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let sent = if fits {
            let response = builder.build(
                metadata,
                reply.answers.iter(),
                reply.authorities.iter(),
                [],
                reply.additionals.iter(),
            );
            response_handle.send_response(response).await
        } else {
            // Send an empty TC=1 reply that keeps its OPT record, rather than a cut one that
            // loses it; the client retries over TCP (RFC 6891 section 7, RFC 7766).
            metadata.truncation = true;
            response_handle
                .send_response(builder.build_no_records(metadata))
                .await
        };
        match sent {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "failed to send a DNS response");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
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

/// The size `reply` takes on the wire.
fn encoded_len(
    request: &Request,
    metadata: &Metadata,
    reply: &Reply,
    edns: Option<&Edns>,
) -> usize {
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let response = builder.build(
        *metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        [],
        reply.additionals.iter(),
    );
    let mut buf = Vec::with_capacity(1024);
    let mut encoder = BinEncoder::new(&mut buf);
    match response.destructive_emit(&mut encoder) {
        Ok(_) => buf.len(),
        // Too large to encode at all: certainly too large for the limit.
        Err(_) => usize::MAX,
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
