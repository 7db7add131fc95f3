//! Replies before and while they are sent: the RCODE and sections a query gets, the Extended
//! DNS Error for each failure (RFC 8914), EDNS in the response (RFC 6891, RFC 3225), and
//! truncation when a reply does not fit the client's UDP size (RFC 6891 section 7, RFC 7766).

use std::sync::Arc;

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Metadata, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::opt::EdnsOption},
    serialize::binary::{BinDecoder, BinEncoder},
};
use hickory_server::{
    net::xfer::Protocol,
    server::{Request, ResponseHandler, ResponseInfo},
    zone_handler::{MessageResponseBuilder, Queries},
};
use tracing::debug;

use super::{cache::CachedAnswer, forwarder::ForwardError, memo::Reuse};
use crate::naming::{AnswerNote, NamingAnswer};

/// EDNS option code of Extended DNS Errors (RFC 8914).
const EDE_OPTION: u16 = 15;
/// Room left for the header and OPT (an Extended DNS Error included) when judging from a size
/// estimate whether an answer fits; closer calls are measured exactly.
const SIZE_MARGIN: usize = 128;
/// Largest reply without EDNS over UDP (RFC 1035 section 4.2.1).
const PLAIN_UDP_SIZE: u16 = 512;

/// Extended DNS Error codes we send (RFC 8914 section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ede {
    /// 0: a failure no other code names (upstreams failed the query, overload).
    Other = 0,
    /// 3: the answer is past its TTL, served because refreshing it failed or is slow (RFC 8767).
    StaleAnswer = 3,
    /// 17: an answer changed by policy: NXDOMAIN for the DNS-over-HTTPS canary, private
    /// addresses removed from a `.p2p` answer (DNS rebinding protection).
    Filtered = 17,
    /// 18: the client or the request is not allowed (ACL, zone transfer, forwarding loop).
    Prohibited = 18,
    /// 22: no upstream, or the P2P network, answered (or this node has no peer to ask).
    NoReachableAuthority = 22,
    /// 23: an upstream's answer could not be used (malformed): an unrecoverable error in
    /// talking to another server.
    NetworkError = 23,
    /// 24: upstreams answered with data that cannot be used (answers to another question).
    InvalidData = 24,
}

/// A reply before encoding.
#[derive(Debug)]
pub struct Reply {
    rcode: ResponseCode,
    /// Where the answer came from, for the metrics (an alias chain's: where it started).
    pub source: crate::metrics::Source,
    /// AA: the answer comes from names this daemon serves itself.
    pub authoritative: bool,
    /// AD: an upstream validated the answer and the client asked to know (RFC 6840 section
    /// 5.8).
    pub authentic_data: bool,
    /// The answer section, TTLs as sent. Add to it with [`Reply::push_answer`], which keeps
    /// the size estimate true.
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    /// The Extended DNS Error sent with the reply, and its extra text.
    ede: Option<(Ede, &'static str)>,
    /// Estimated encoded size in bytes, when known without encoding.
    size_hint: Option<usize>,
    /// Set while the reply is one fresh cache hit as it was stored: then its encoding may be
    /// sent again ([`super::memo`]); anything that changes the reply drops it.
    reuse: Option<Reuse>,
}

impl Reply {
    /// A reply with `rcode` and no records.
    pub fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            source: crate::metrics::Source::Local,
            authoritative: false,
            authentic_data: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            ede: None,
            size_hint: Some(0),
            reuse: None,
        }
    }

    /// The answer section, TTLs as sent.
    pub fn answers(&self) -> &[Record] {
        &self.answers
    }

    /// Appends `record` to the answer section. The size is then known only by encoding: a
    /// long owner name is written out in full after the question (hickory compresses no name
    /// against the question it echoes), which the fuzzer found a synthesized ANY answer
    /// (RFC 8482) sending over the client's UDP size with.
    pub fn push_answer(&mut self, record: Record) {
        self.answers.push(record);
        self.size_hint = None;
        self.reuse = None;
    }

    /// Adds the Extended DNS Error `ede` with `text`.
    pub fn with_ede(mut self, ede: Ede, text: &'static str) -> Self {
        self.ede = Some((ede, text));
        self.reuse = None;
        self
    }

    /// Marks this reply, a fresh cache hit as [`Reply::forwarded`] made it, as one whose
    /// encoding may be sent again as `reuse` says.
    pub fn reusable(mut self, reuse: Option<Reuse>) -> Self {
        self.reuse = reuse;
        self
    }

    /// How the encoding of this reply may be sent again, if it may ([`super::memo`]).
    pub fn reuse(&self) -> Option<Reuse> {
        self.reuse
    }

    /// The naming subsystem's answer: AA as the answer says (never on SERVFAIL), and its note
    /// as an Extended DNS Error.
    pub fn from_naming(answer: NamingAnswer) -> Self {
        let failed = answer.rcode == ResponseCode::ServFail;
        let source = if answer.network {
            crate::metrics::Source::P2pDht
        } else {
            crate::metrics::Source::P2pLocal
        };
        Self {
            rcode: answer.rcode,
            source,
            authoritative: answer.authoritative && !failed,
            authentic_data: false,
            answers: answer.answers,
            authorities: answer.authorities,
            additionals: answer.additionals,
            ede: answer.note.map(|note| (naming_ede(note), note.text())),
            size_hint: None,
            reuse: None,
        }
    }

    /// A forwarded answer stored `age` seconds ago, its TTLs counted down; a `stale` one gets
    /// `stale_ttl` seconds on each record (RFC 8767 section 4). Owner names equal to `qname`
    /// copy its letter case. The upstream's AD bit is passed on only if `ad_asked` (the
    /// client set DO or AD: RFC 6840 section 5.8); legacy stubs and middleboxes would take
    /// it for more than it is.
    pub fn forwarded(
        answer: &Arc<CachedAnswer>,
        age: u32,
        stale: Option<u32>,
        qname: &Name,
        ad_asked: bool,
    ) -> Self {
        let copy = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = stale.unwrap_or_else(|| r.ttl.saturating_sub(age));
                    if r.name == *qname {
                        r.name = qname.clone();
                    }
                    r
                })
                .collect()
        };
        Self {
            rcode: answer.rcode,
            source: crate::metrics::Source::Upstream,
            authoritative: false,
            authentic_data: answer.authentic_data && ad_asked,
            answers: copy(&answer.answers),
            authorities: copy(&answer.authorities),
            additionals: copy(&answer.additionals),
            ede: stale.map(|_| (Ede::StaleAnswer, "")),
            size_hint: Some(answer.wire_len),
            reuse: None,
        }
    }

    /// The target of the alias chain that ends this NOERROR answer without data of `qtype`
    /// and without an SOA saying there is none: an upstream that did not complete the chain
    /// (an authoritative server, or one that stops at a zone it does not serve). `None` when
    /// the answer is complete, negative, or its chain loops back on itself.
    pub fn dangling_alias(&self, qtype: RecordType) -> Option<Name> {
        if self.rcode != ResponseCode::NoError
            || matches!(qtype, RecordType::CNAME | RecordType::ANY)
            || self.answers.iter().any(|r| r.record_type() == qtype)
            || self
                .authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA)
        {
            return None;
        }
        let RData::CNAME(target) = &self.answers.last()?.data else {
            return None;
        };
        let seen = self.answers.iter().any(|r| r.name == target.0);
        (!seen).then(|| target.0.clone())
    }

    /// Drops the records of the answer section from the first one owned by a name for which
    /// `served_here` holds (an upstream's data for `localhost.` or a `.p2p` name inside an
    /// alias chain), with the authority section that described the chain's end: this
    /// resolver answers those names itself. Returns whether anything was dropped.
    pub fn cut_chain_at(&mut self, served_here: impl Fn(&Name) -> bool) -> bool {
        let Some(first) = self.answers.iter().position(|r| served_here(&r.name)) else {
            return false;
        };
        self.answers.truncate(first);
        self.authorities.clear();
        self.rcode = ResponseCode::NoError;
        self.authentic_data = false;
        self.size_hint = None;
        self.reuse = None;
        true
    }

    /// Appends `tail`, the answer for the target of this reply's alias chain: its records
    /// follow the chain, its RCODE and authority section (an SOA when negative) replace
    /// ours, and AD stays only if both parts were validated.
    pub fn extend_chain(&mut self, tail: Self) {
        self.reuse = None;
        if tail.rcode == ResponseCode::ServFail {
            // An alias whose target cannot be resolved fails the answer (unbound does the
            // same): a chain without its end reads as "no such data" to a stub.
            *self = tail;
            return;
        }
        self.rcode = tail.rcode;
        self.authentic_data &= tail.authentic_data;
        self.answers.extend(tail.answers);
        self.authorities = tail.authorities;
        self.ede = self.ede.or(tail.ede);
        self.size_hint = self.size_hint.zip(tail.size_hint).map(|(a, b)| a + b);
    }

    /// SERVFAIL, with the Extended DNS Error that says why no upstream answered.
    pub fn forward_failed(error: ForwardError) -> Self {
        let (ede, text) = match error {
            ForwardError::NoUpstreams => (Ede::NoReachableAuthority, "no upstream DNS server"),
            ForwardError::Timeout => (Ede::NoReachableAuthority, "upstreams did not answer"),
            ForwardError::Upstream(_) => (Ede::Other, "upstreams failed the query"),
            ForwardError::Overloaded => (Ede::Other, "too many queries in flight"),
            ForwardError::LocalResources => (Ede::Other, "out of sockets for upstream queries"),
            ForwardError::Malformed => (Ede::NetworkError, "upstream answer is malformed"),
            ForwardError::Certificate => (
                Ede::NetworkError,
                "upstream certificate not accepted (see the daemon's log)",
            ),
            ForwardError::Mismatch => (
                Ede::InvalidData,
                "upstream answers did not answer the question",
            ),
        };
        Self::rcode(ResponseCode::ServFail)
            .with_ede(ede, text)
            .from_source(crate::metrics::Source::Upstream)
    }

    /// The reply, counted as coming from `source`.
    pub fn from_source(mut self, source: crate::metrics::Source) -> Self {
        self.source = source;
        self
    }

    /// The RCODE sent.
    pub fn response_code(&self) -> ResponseCode {
        self.rcode
    }
}

/// The Extended DNS Error code for why a `.p2p` answer is not simply what the records say.
fn naming_ede(note: AnswerNote) -> Ede {
    match note {
        AnswerNote::NotConnected
        | AnswerNote::NoPeerAnswered
        | AnswerNote::Timeout
        | AnswerNote::TargetFailed => Ede::NoReachableAuthority,
        AnswerNote::PrivateRemoved => Ede::Filtered,
        AnswerNote::Busy
        | AnswerNote::NodeStopped
        | AnswerNote::PinnedOwnerMissing
        | AnswerNote::TunnelListen
        | AnswerNote::TunnelAddress => Ede::Other,
    }
}

/// Sends `reply` to `request` through `response_handle`. A UDP reply larger than the client's
/// EDNS size (at most `udp_payload` bytes; 512 without EDNS) goes out empty with TC=1, so the
/// client asks again over TCP.
pub async fn send<R: ResponseHandler>(
    request: &Request,
    reply: Reply,
    mut response_handle: R,
    udp_payload: u16,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    metadata.authoritative = reply.authoritative;
    // CD is copied from the query by hickory (RFC 4035 section 3.2.2); AD is ours to set.
    metadata.authentic_data = reply.authentic_data;
    metadata.response_code = reply.rcode;
    let edns = response_edns(request, &reply, udp_payload);
    let limit = match (request.protocol(), &request.edns) {
        (Protocol::Udp, Some(req)) => usize::from(req.max_payload().clamp(512, udp_payload)),
        (Protocol::Udp, None) => usize::from(PLAIN_UDP_SIZE),
        _ => usize::from(u16::MAX),
    };
    // hickory echoes the question section as it came and compresses no name against it: a
    // name the upstream compressed against the question is written out once more.
    let question = request.queries.as_bytes().len();
    let fits = match reply.size_hint {
        Some(hint) if hint + question + SIZE_MARGIN <= limit => true,
        _ => encoded_len(request, &metadata, &reply, edns.as_ref()) <= limit,
    };

    let no_question: Queries;
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
        if question + SIZE_MARGIN > limit {
            // The question section, echoed as it came, is over the limit by itself (several
            // questions, answered FORMERR, REFUSED or BADVERS): hickory would fail to encode
            // the reply, log an error and send a bare SERVFAIL for every such datagram. Leave
            // it out, as hickory does for a query it cannot parse.
            no_question = Queries::read(&mut BinDecoder::new(&[]), 0)
                .expect("no question reads from no bytes");
            builder = MessageResponseBuilder::new(&no_question, edns.as_ref());
        }
        response_handle
            .send_response(builder.build_no_records(metadata))
            .await
    };
    sent.unwrap_or_else(|error| {
        debug!(%error, src = %request.src(), "failed to send a DNS response");
        ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        })
    })
}

/// RFC 6891: EDNS is answered with EDNS (version 0, our size) and DO echoed (RFC 3225); no
/// option the client did not ask for is sent except an Extended DNS Error.
fn response_edns(request: &Request, reply: &Reply, udp_payload: u16) -> Option<Edns> {
    let req = request.edns.as_ref()?;
    let mut edns = Edns::new();
    edns.set_max_payload(udp_payload);
    edns.set_version(0);
    edns.set_dnssec_ok(req.flags().dnssec_ok);
    if let Some((code, text)) = reply.ede {
        let mut data = (code as u16).to_be_bytes().to_vec();
        data.extend_from_slice(text.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDE_OPTION, data));
    }
    Some(edns)
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
    let mut encoder = compressing_encoder(&mut buf, request.queries.as_bytes());
    match response.destructive_emit(&mut encoder) {
        Ok(_) => encoder.offset(),
        // Too large to encode at all: certainly too large for the limit.
        Err(_) => usize::MAX,
    }
}

/// An encoder over `buf` for a reply whose question section is `question` as the client sent
/// it, that compresses names against the question's first name (RFC 1035 section 4.1.4).
/// hickory echoes the question as raw bytes, so by itself it writes an answer's owner name out
/// in full a second time: 14 bytes more for `www.example.com`, and a reply to a 244-octet name
/// truncated under 512 bytes where the upstream's fitted. The question's name is written here
/// where the message will hold it, its labels made pointer targets, and the encoder set back
/// to the start: the message is then written over the same bytes. Its length is the
/// encoder's offset at the end, not `buf`'s (which holds the seed when the reply leaves the
/// question out).
pub fn compressing_encoder<'a>(buf: &'a mut Vec<u8>, question: &[u8]) -> BinEncoder<'a> {
    const HEADER: usize = 12;
    let mut encoder = BinEncoder::new(buf);
    let mut labels = Vec::new();
    let mut at = 0;
    // The first name: labels of 1 to 63 octets up to the root (no pointer can come first).
    while let Some(&len) = question.get(at) {
        if len == 0 || len > 63 {
            break;
        }
        labels.push(at);
        at += 1 + usize::from(len);
    }
    if question.get(at) != Some(&0) || labels.is_empty() || at > 254 {
        return encoder;
    }
    if encoder.emit_vec(&[0; HEADER]).is_ok() && encoder.emit_vec(&question[..at]).is_ok() {
        for start in labels {
            encoder.store_label_pointer(HEADER + start, HEADER + at);
        }
    }
    encoder.set_offset(0);
    encoder
}
