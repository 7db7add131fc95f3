//! STUN (RFC 8489, which replaced RFC 5389), the Binding method only: how a node learns the
//! address and port its UDP packets appear to come from, and whether a NAT maps them to the same
//! public port whatever the destination (needed for hole punching) or not (a symmetric NAT).
//!
//! The module owns the STUN wire format and both roles of the Binding exchange, split by role
//! as rust-libp2p splits a protocol into client and server: `message` is the codec both roles
//! share (header, attributes, XOR-MAPPED-ADDRESS, FINGERPRINT), `server` answers requests
//! ([`serve`], run by the introduction server) and `client` asks ([`binding`],
//! [`mapping_behaviour`], used by the NAT probe). It binds no socket, reads no configuration
//! and touches neither libp2p nor the node's status: callers hand it a bound UDP socket, and
//! what a [`Mapping`] means for reachability is decided in `crate::nat`.

mod client;
mod message;
mod server;
#[cfg(test)]
mod test_vectors;

pub use client::{Mapping, StunError, binding, mapping_behaviour};
pub(crate) use client::{local_endpoint, same_endpoint};
pub use server::{MAX_RESPONSE, serve};
#[cfg(feature = "fuzzing")]
pub(crate) use {client::read_response, server::respond};

/// The two roles against each other, and both parsers against hostile input.
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::{
        MAX_RESPONSE,
        client::{binding_request, read_response},
        message::{HEADER_LEN, MAGIC_COOKIE, SOFTWARE},
        server::respond,
        test_vectors::*,
    };

    #[test]
    fn our_request_is_answered() {
        let id = [7u8; 12];
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let reply = respond(&binding_request(&id), source).unwrap();
        assert_eq!(read_response(&reply, &id, source).unwrap().unwrap(), source);
    }

    #[test]
    fn random_and_truncated_datagrams_never_panic_nor_get_replies() {
        let mut rng = StdRng::seed_from_u64(0x5354_554E);
        let source: SocketAddr = V6_SOURCE.parse().unwrap();
        let mut buf = vec![0u8; 600];
        for _ in 0..20_000 {
            let len = rng.random_range(0..buf.len());
            rng.fill(&mut buf[..len]);
            // Half of them look like STUN at first sight, to get past the header checks.
            if len >= HEADER_LEN && rng.random_bool(0.5) {
                buf[0] &= 0x3F;
                buf[2..4].copy_from_slice(&u16::try_from(len - HEADER_LEN).unwrap().to_be_bytes());
                buf[4..8].copy_from_slice(&MAGIC_COOKIE);
            }
            assert!(respond(&buf[..len], source).is_err());
            assert!(read_response(&buf[..len], &VECTOR_ID, source).is_none());
        }

        let valid = [
            rfc5769_request(),
            request(&[(SOFTWARE, b"abc"), (0x8030, &[1, 2, 3, 4, 5])]),
        ];
        for datagram in &valid {
            for cut in 0..datagram.len() {
                assert!(respond(&datagram[..cut], source).is_err(), "cut at {cut}");
            }
            // Bit flips: some still make a valid request; a reply is never large.
            for _ in 0..5_000 {
                let mut mutated = datagram.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..mutated.len());
                    mutated[i] ^= 1 << rng.random_range(0..8);
                }
                if let Ok(reply) = respond(&mutated, source) {
                    assert!(reply.len() <= MAX_RESPONSE);
                }
                let _ = read_response(&mutated, &VECTOR_ID, source);
            }
        }
        let response = rfc5769_response_v4();
        for cut in 0..response.len() {
            assert!(read_response(&response[..cut], &VECTOR_ID, source).is_none());
        }
    }
}
