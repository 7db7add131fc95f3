//! A client's query through the daemon's DNS handler, as its DNS server hands it over: the
//! ACL, the protocol checks, routing to the special-use names, the local names (chains,
//! wildcards, CNAMEs out to ICANN names) or the forwarder and its cache, and the reply's
//! sizing and encoding. The first byte picks UDP or TCP and the client's address; the rest is
//! the DNS message. Every reply is checked (`Harness::ask`).
#![no_main]

use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;
use p2pdns_fuzz::{Harness, client};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, wire)) = data.split_first() else {
        return;
    };
    let protocol = if selector & 1 == 0 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let harness = Harness::get();
    harness.seed_cache();
    harness.ask(wire, protocol, client(selector >> 1));
});
