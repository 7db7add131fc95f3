//! A line on the control socket, as a local client sends it: the JSON request's parsing and its
//! handling by a daemon without a P2P node (status and resolve are answered; the requests that
//! need the node are refused), and the JSON response.
//!
//! Checked beyond "no panic": the daemon answers with one line of JSON that is a `Response`;
//! a request that parses serializes back to JSON that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pdns::{
    control::{Context, Request, Response},
    fuzzing::control_exchange,
};
use p2pdns_fuzz::Harness;

fuzz_target!(|data: &[u8]| {
    let harness = Harness::get();
    let context = Context {
        naming: harness.naming.clone(),
        forwarder: harness.forwarder.clone(),
        dns_addrs: harness.config.dns.listen.clone(),
        config_file: None,
    };
    let answer = harness
        .block_on(control_exchange(data, &context))
        .expect("a socket pair");
    let first = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if answer.is_empty() {
        // The server reads the request as UTF-8 text and closes on anything else.
        assert!(
            std::str::from_utf8(first).is_err(),
            "no answer to a text line"
        );
        return;
    }
    let line = answer.strip_suffix(b"\n").unwrap_or_else(|| {
        panic!(
            "no newline ends the answer {:?}",
            String::from_utf8_lossy(&answer)
        )
    });
    assert!(!line.contains(&b'\n'), "one line");
    serde_json::from_slice::<Response>(line).expect("the answer is a Response");

    if let Ok(request) = serde_json::from_slice::<Request>(first) {
        let json = serde_json::to_string(&request).expect("a request serializes");
        let again: Request = serde_json::from_str(&json).expect("a serialized request parses");
        assert_eq!(
            serde_json::to_string(&again).expect("serializes"),
            json,
            "round trip"
        );
    }
});
