//! One DNS message in, the bytes of its answer out, for either transport: what is no query is
//! dropped unanswered (under 12 octets, or QR=1: answering responses would let anyone bounce
//! traffic off us), a query whose body does not parse gets FORMERR (RFC 1035 section 4.1.1),
//! and every other goes to the [`Handler`], whose reply is captured as bytes.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use hickory_proto::{
    op::{Header, HeaderCounts, MessageType, Metadata, Query, ResponseCode},
    rr::Record,
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder},
};
use hickory_server::{
    net::{NetError, xfer::Protocol},
    server::{Request, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use tracing::debug;

use crate::dns::{handler::Handler, memo::is_plain_query, response::compressing_encoder};

/// Largest reply without EDNS over UDP (RFC 1035 section 4.2.1).
const PLAIN_UDP_SIZE: u16 = 512;

/// The encoded answer to the DNS message `bytes` from `src`, or `None` when it gets none.
pub async fn answer(
    handler: &Handler,
    bytes: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(&bytes)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    // The query's bytes are the memo's key: kept only where a reply to it may be remembered.
    let memo_key = (protocol == Protocol::Udp && is_plain_query(&bytes)).then(|| bytes.clone());
    let request = match Request::from_bytes(bytes, src, protocol) {
        Ok(request) => request,
        Err(error) => {
            debug!(%src, %error, "answering FORMERR to a query that does not parse");
            handler.count_unparsed(ResponseCode::FormErr);
            return header_only(&header.metadata, ResponseCode::FormErr);
        }
    };
    let capture = Capture {
        protocol,
        question: request.queries.as_bytes().into(),
        encoded: Arc::default(),
    };
    let (_, reuse) = handler.answer(&request, capture.clone()).await;
    let encoded = Arc::into_inner(capture.encoded).and_then(OnceLock::into_inner)?;
    if let (Some(query), Some(reuse)) = (memo_key, reuse) {
        handler.remember(&query, &encoded, reuse);
    }
    Some(encoded)
}

/// REFUSED to the DNS message `bytes`, its question copied when it has one (so that clients
/// match it to their query); `None` when it gets no reply (see the module). For the queries
/// that come while the server shuts down: the client moves to its next server at once.
pub fn refused(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(bytes);
    let header = Header::read(&mut decoder).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let query = match header.counts.queries {
        1 => Query::read(&mut decoder).ok(),
        _ => None,
    };
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::Refused;
    let reply = Header {
        metadata,
        counts: HeaderCounts {
            queries: u16::from(query.is_some()),
            ..HeaderCounts::default()
        },
    };
    let mut out = Vec::with_capacity(bytes.len().min(512));
    let mut encoder = BinEncoder::new(&mut out);
    reply.emit(&mut encoder).ok()?;
    if let Some(query) = query {
        query.emit(&mut encoder).ok()?;
    }
    Some(out)
}

/// A reply of a header alone with `rcode`, to the query whose header is `query`.
fn header_only(query: &Metadata, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut metadata = Metadata::response_from_request(query);
    metadata.response_code = rcode;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    header.to_bytes().ok()
}

/// Takes the handler's reply, encoded for `protocol`.
#[derive(Clone)]
struct Capture {
    protocol: Protocol,
    /// The question section as the client sent it, for name compression against it.
    question: Arc<[u8]>,
    /// The first reply sent; a handler sends one.
    encoded: Arc<OnceLock<Vec<u8>>>,
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
        let limit = match (self.protocol, response.edns()) {
            (Protocol::Udp, Some(edns)) => edns.max_payload().max(PLAIN_UDP_SIZE),
            (Protocol::Udp, None) => PLAIN_UDP_SIZE,
            _ => u16::MAX,
        };
        let metadata = *response.metadata();
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = compressing_encoder(&mut bytes, &self.question);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => {
                let end = encoder.offset();
                bytes.truncate(end);
                info
            }
            Err(error) => {
                // The handler sizes replies to fit; should one not, SERVFAIL beats silence.
                debug!(%error, "a reply did not encode; answering SERVFAIL");
                bytes = header_only(&metadata, ResponseCode::ServFail).unwrap_or_default();
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        let _ = self.encoded.set(bytes);
        Ok(info)
    }
}
