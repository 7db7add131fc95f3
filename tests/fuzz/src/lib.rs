//! What the fuzz targets share: a daemon's DNS handler, forwarder and naming built from a
//! configuration as `Daemon::bind` builds them, minus the sockets; a response handler that
//! encodes replies as hickory's server does; and the checks every reply must pass.
//!
//! The forwarder has no upstream (`upstream.servers` is empty and its resolv.conf is
//! /dev/null), so a query that needs one is answered SERVFAIL at once, with no network; the
//! `upstream_answer` target feeds answers into its cache instead.

use std::{
    future::Future,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{LowerName, Name, Record, RecordType},
    serialize::binary::{BinEncodable, BinEncoder, NameEncoding},
};
use hickory_server::{
    net::{NetError, runtime::TokioTime, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use p2pdns::{
    Config,
    dns::{
        cache::{CacheKey, CachedAnswer},
        exchange::wire::decode_response,
        forwarder::Forwarder,
        handler::Handler,
        response::compressing_encoder,
        upstream::UpstreamFollower,
    },
    naming::{Naming, parse_zone},
};
use tokio::{runtime::Runtime, sync::Notify, time::Instant};

/// The daemon's configuration in the targets: local names under two TLDs with every kind of
/// chain (in the zone, out to an ICANN name, looping, wildcard), a small cache.
const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:53"]
[upstream]
resolv_conf = "/dev/null"
[cache]
max_entries = 256
max_bytes = 1048576
[naming]
tlds = ["p2p", "test"]
[naming.records]
"site.p2p" = ["A 192.0.2.10", "AAAA 2001:db8::10", "TXT \"hello world\"", "3600 MX 10 mail.site.p2p.", "CAA 0 issue \"ca.example\""]
"mail.site.p2p" = ["A 192.0.2.25"]
"www.site.p2p" = ["CNAME site.p2p."]
"out.site.p2p" = ["CNAME www.example.com."]
"loop.site.p2p" = ["CNAME loop2.site.p2p."]
"loop2.site.p2p" = ["CNAME loop.site.p2p."]
"*.wild.site.p2p" = ["A 192.0.2.7", "TXT \"wild\""]
"_http._tcp.site.p2p" = ["SRV 0 5 80 site.p2p."]
"deep.a.b.site.p2p" = ["TYPE65280 \\# 3 abcdef"]
"nas.home.test" = ["A 10.0.0.2", "SSHFP 1 2 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]
[p2p]
enabled = false
"#;

/// The answers [`Harness::seed_cache`] stores: question name and type, RCODE, answer and
/// authority sections as zone-file text.
const SEEDS: &[(&str, &str, ResponseCode, &str, &str)] = &[
    (
        "example.com.",
        "A",
        ResponseCode::NoError,
        "example.com. 300 A 192.0.2.1",
        "",
    ),
    (
        "www.example.com.",
        "A",
        ResponseCode::NoError,
        "www.example.com. 300 CNAME cdn.example.net.\ncdn.example.net. 60 A 192.0.2.80",
        "",
    ),
    (
        "chain.example.com.",
        "A",
        ResponseCode::NoError,
        "chain.example.com. 300 CNAME www.site.p2p.",
        "",
    ),
    (
        "dangling.example.com.",
        "AAAA",
        ResponseCode::NoError,
        "dangling.example.com. 300 CNAME nowhere.example.org.",
        "",
    ),
    (
        "nx.example.com.",
        "A",
        ResponseCode::NXDomain,
        "",
        "example.com. 900 SOA ns.example.com. admin.example.com. 1 7200 900 1209600 300",
    ),
    (
        "example.com.",
        "MX",
        ResponseCode::NoError,
        "",
        "example.com. 900 SOA ns.example.com. admin.example.com. 1 7200 900 1209600 300",
    ),
    (
        "big.example.com.",
        "TXT",
        ResponseCode::NoError,
        "big.example.com. 300 TXT \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nbig.example.com. 300 TXT \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"\nbig.example.com. 300 TXT \"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"",
        "",
    ),
];

/// How long a query may take to be answered before it counts as a hang. Nothing in a target
/// waits on the network, so any answer comes within microseconds.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A daemon's DNS side without sockets, and the runtime it runs on.
pub struct Harness {
    /// The request handler the DNS server calls.
    pub handler: Handler,
    /// The forwarder behind it, whose cache the targets fill.
    pub forwarder: Arc<Forwarder>,
    /// The naming subsystem behind it (local records only: no P2P node).
    pub naming: Arc<Naming>,
    /// The configuration it was built from.
    pub config: Config,
    runtime: Runtime,
}

impl Harness {
    /// The one harness of this process, built on first use.
    pub fn get() -> &'static Self {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(Self::new)
    }

    fn new() -> Self {
        let config: Config = toml::from_str(CONFIG).expect("the harness configuration parses");
        config
            .validate()
            .expect("the harness configuration is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let _entered = runtime.enter();
        let naming = Arc::new(Naming::new(&config.naming).expect("the local records load"));
        let waiting = Arc::new(tokio::sync::Semaphore::new(config.dns.max_inflight));
        let upstreams = UpstreamFollower::new(&config.upstream, &config.dns.listen);
        let forwarder = Arc::new(Forwarder::new(
            upstreams.set().clone(),
            config.upstream.clone(),
            config.cache.clone(),
            waiting,
        ));
        let handler = Handler::new(forwarder.clone(), naming.clone(), &config.dns);
        Self {
            handler,
            forwarder,
            naming,
            config,
            runtime,
        }
    }

    /// Fills the forwarder's cache, once, with answers upstreams could have given: plain,
    /// an alias chain, a chain into a name served here (which the handler cuts), a chain
    /// whose end is missing (which it completes, or fails without an upstream), NXDOMAIN and
    /// NODATA with their SOA. Stored for a day: none goes stale while a target runs.
    pub fn seed_cache(&self) {
        static SEEDED: std::sync::Once = std::sync::Once::new();
        SEEDED.call_once(|| {
            for (qname, qtype, rcode, answers, authorities) in SEEDS {
                let records = |text: &str| {
                    parse_zone(&Name::root(), text, 300).expect("the seed records parse")
                };
                let qtype = RecordType::from_str(qtype).expect("a seed type");
                let qname = Name::from_ascii(qname).expect("a seed name");
                let mut message = Message::new(1, MessageType::Response, OpCode::Query);
                message.metadata.response_code = *rcode;
                message.add_query(Query::query(qname.clone(), qtype));
                message.answers = records(answers);
                message.authorities = records(authorities);
                let wire_len = message.to_vec().expect("a seed answer encodes").len();
                let key = CacheKey {
                    name: LowerName::new(&qname),
                    qtype,
                    dnssec_ok: false,
                    checking_disabled: false,
                };
                let config = &self.config.cache;
                let answer = CachedAnswer::from_message(message, wire_len, &key, config);
                self.forwarder
                    .cache()
                    .insert(key, Arc::new(answer), 86_400, Instant::now());
            }
        });
    }

    /// Runs `future` to completion on the harness's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// What the DNS server does with `wire` from `src` over `protocol`: `None` when hickory's
    /// server drops it or answers it itself (under 12 bytes, QR=1, FORMERR for a body that does
    /// not parse), else the handler's one reply, encoded. Panics if the handler sends no reply
    /// within [`ANSWER_WAIT`], or one hickory could not encode.
    pub fn ask(
        &self,
        wire: &[u8],
        protocol: Protocol,
        src: SocketAddr,
    ) -> Option<(Request, Vec<u8>)> {
        let request = Request::from_bytes(wire.to_vec(), src, protocol).ok()?;
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let capture = Capture::new(protocol, request.queries.as_bytes());
        self.block_on(async {
            self.handler
                .handle_request::<_, TokioTime>(&request, capture.clone())
                .await;
            // Over TCP the handler answers from a task of its own.
            tokio::time::timeout(ANSWER_WAIT, capture.sent.notified())
                .await
                .ok();
        });
        let mut replies = capture.replies.lock().expect("no panic while held");
        assert_eq!(replies.len(), 1, "one query, one reply");
        let reply = replies.pop().expect("one reply");
        check_reply(&request, &reply);
        Some((request, reply))
    }
}

/// Keeps the replies the handler sends, encoded as the daemon's server encodes them (hickory's
/// encoder, names compressed against the question: `compressing_encoder`).
#[derive(Clone)]
struct Capture {
    protocol: Protocol,
    question: Arc<[u8]>,
    replies: Arc<Mutex<Vec<Vec<u8>>>>,
    sent: Arc<Notify>,
}

impl Capture {
    fn new(protocol: Protocol, question: &[u8]) -> Self {
        Self {
            protocol,
            question: question.into(),
            replies: Arc::default(),
            sent: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // hickory's server limits a UDP reply to the reply's EDNS size (512 without EDNS) and
        // answers SERVFAIL in place of a reply that does not encode: the handler must never
        // build such a reply.
        let limit = match (self.protocol, response.edns()) {
            (Protocol::Udp, Some(edns)) => edns.max_payload(),
            (Protocol::Udp, None) => 512,
            _ => u16::MAX,
        };
        let mut wire = Vec::with_capacity(512);
        let mut encoder = compressing_encoder(&mut wire, &self.question);
        encoder.set_max_size(limit);
        let info = response
            .destructive_emit(&mut encoder)
            .unwrap_or_else(|error| panic!("a reply hickory cannot encode: {error}"));
        let end = encoder.offset();
        wire.truncate(end);
        self.replies.lock().expect("no panic while held").push(wire);
        self.sent.notify_one();
        Ok(info)
    }
}

/// Checks what any reply to `request` must be: within the client's UDP size, and one the
/// daemon's own lenient decoder reads, with the query's ID, opcode and question, QR=1, and
/// an OPT record exactly when the query had one (RFC 6891 section 7).
///
/// hickory echoes the question section as it came; a question name compressed with a pointer
/// into the header (no real client sends one) then points elsewhere in the reply, so such a
/// reply is checked for its size only.
fn check_reply(request: &Request, wire: &[u8]) {
    if request.protocol() == Protocol::Udp {
        let limit = request
            .edns
            .as_ref()
            .map_or(512, |edns| edns.max_payload().max(512));
        assert!(
            wire.len() <= usize::from(limit),
            "UDP reply of {} bytes over {limit}: {wire:02x?}",
            wire.len()
        );
    }
    if !plain_question(request) {
        return;
    }
    let decoded = decode_response(wire)
        .unwrap_or_else(|error| panic!("our own reply does not decode: {error}: {wire:02x?}"))
        .message;
    let meta = &decoded.metadata;
    assert_eq!(meta.id, request.metadata.id, "reply ID");
    assert_eq!(meta.message_type, MessageType::Response, "QR=1");
    assert_eq!(meta.op_code, request.metadata.op_code, "opcode echoed");
    // Several questions over the UDP limit by themselves are left out (TC=1).
    let left_out = meta.truncation && decoded.queries.is_empty() && request.queries.len() > 1;
    if !left_out {
        let asked: Vec<Query> = request
            .queries
            .queries()
            .iter()
            .map(|q| q.original().clone())
            .collect();
        assert_eq!(decoded.queries, asked, "question echoed");
    }
    assert_eq!(
        decoded.edns.is_some(),
        request.edns.is_some(),
        "OPT in reply iff in query"
    );
}

/// Does the query's question section spell its names out, without compression pointers?
fn plain_question(request: &Request) -> bool {
    let mut plain = Vec::with_capacity(request.queries.as_bytes().len());
    let mut encoder = BinEncoder::new(&mut plain);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    for query in request.queries.queries() {
        if query.original().emit(&mut encoder).is_err() {
            return false;
        }
    }
    plain == request.queries.as_bytes()
}

/// The record sections of `message` as comparable text: owner, class, type, TTL and RDATA of
/// each record, section by section.
pub fn sections(message: &Message) -> [Vec<String>; 3] {
    let text = |records: &[Record]| -> Vec<String> {
        records
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {:?}",
                    r.name,
                    r.dns_class,
                    r.record_type(),
                    r.ttl,
                    r.data
                )
            })
            .collect()
    };
    [
        text(&message.answers),
        text(&message.authorities),
        text(&message.additionals),
    ]
}

/// The client addresses a target's first byte chooses among: loopback (allowed), a v4-mapped
/// loopback (allowed, as a dual-stack socket sees it), ::1 (allowed) and an outside address
/// (refused by `dns.allow`).
pub fn client(selector: u8) -> SocketAddr {
    const CLIENTS: [&str; 4] = [
        "127.0.0.1:40000",
        "[::ffff:127.0.0.1]:40001",
        "[::1]:40002",
        "192.0.2.1:40003",
    ];
    CLIENTS[usize::from(selector) % CLIENTS.len()]
        .parse()
        .expect("static addresses")
}
