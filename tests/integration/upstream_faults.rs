//! Upstreams that misbehave the way real ones do (issue 11, kinds 1, 4 and 5), played by the
//! scripted upstream: strict about EDNS or without it, answering records the forwarder does not
//! model, answering what does not parse; and forwarding loops.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RecordType, rdata::opt::EdnsOption},
};
use tokio::time::Instant;

use crate::{
    scripted::{
        Action, Asked, RawSections, Relay, Scripted, Transport, raw_answers, raw_exchange_tcp,
        raw_exchange_udp, raw_query, raw_response, raw_rr, wire_name,
    },
    support::{TestDaemon, WAIT, a_records, ask, config, ede, exchange_tcp, exchange_udp, query},
};

/// The address every scripted A answer carries.
const ADDRESS: [u8; 4] = [192, 0, 2, 1];

/// A NOERROR answer to `asked` with one A record, plus `additionals`.
fn a_answer_with(asked: &Asked, additionals: Vec<Vec<u8>>) -> Vec<u8> {
    let sections = RawSections {
        answers: vec![raw_rr(&asked.qname(), 1, 300, &ADDRESS)],
        additionals,
        ..RawSections::default()
    };
    raw_response(asked, ResponseCode::NoError, 0, &sections)
}

fn a_answer(asked: &Asked) -> Vec<u8> {
    a_answer_with(asked, Vec::new())
}

/// An OPT record (payload 1232, no option) for a response's additional section.
fn opt_record() -> Vec<u8> {
    vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]
}

/// Asks `name`/A with EDNS and checks the reply's RCODE.
async fn ask_expecting(daemon: SocketAddr, name: &str, rcode: ResponseCode) -> Message {
    let reply = ask(daemon, name, RecordType::A).await;
    assert_eq!(reply.metadata.response_code, rcode, "{name}: {reply:?}");
    reply
}

/// Asks `name`/A with EDNS and checks the scripted address comes back.
async fn assert_answered(daemon: SocketAddr, name: &str) {
    let reply = ask_expecting(daemon, name, ResponseCode::NoError).await;
    assert_eq!(a_records(&reply), vec!["192.0.2.1"], "{name}");
}

/// Whether each query the upstream got for `name` carried EDNS, in order.
fn edns_of(upstream: &Scripted, name: &str) -> Vec<bool> {
    upstream
        .asked_for(name)
        .iter()
        .map(Asked::has_edns)
        .collect()
}

#[tokio::test]
async fn an_upstream_without_edns_is_asked_again_without_it_and_that_is_remembered() {
    // FORMERR without OPT is what RFC 6891 section 7 says a server without EDNS answers; some
    // send it without the question, older ones NOTIMP or SERVFAIL.
    for (refusal, with_question) in [
        (ResponseCode::FormErr, true),
        (ResponseCode::FormErr, false),
        (ResponseCode::NotImp, true),
        (ResponseCode::ServFail, true),
    ] {
        let upstream = Scripted::start(move |asked| {
            if !asked.has_edns() {
                return Action::Reply(a_answer(asked));
            }
            let mut refused = raw_response(asked, refusal, 0, &RawSections::default());
            if !with_question {
                refused.truncate(12);
                refused[5] = 0;
            }
            Action::Reply(refused)
        })
        .await;
        let daemon = TestDaemon::start(config(&[upstream.addr])).await;
        let case = format!("{refusal} (question: {with_question})");

        assert_answered(daemon.addr, "first.example.").await;
        assert_eq!(
            edns_of(&upstream, "first.example."),
            [true, false],
            "{case}"
        );

        // A client without EDNS gets its answer too. One name proves little (it may be the
        // trouble); a second name refused alike confirms it, and from then on the upstream
        // is asked once per name, without EDNS.
        let mut plain = query("second.example.", RecordType::A);
        plain.edns = None;
        let reply = exchange_udp(daemon.addr, plain).await;
        assert_eq!(a_records(&reply), vec!["192.0.2.1"], "{case}");
        assert!(reply.edns.is_none(), "{case}");
        assert_eq!(
            edns_of(&upstream, "second.example."),
            [true, false],
            "{case}: the second name confirms"
        );
        for name in ["third.example.", "fourth.example."] {
            assert_answered(daemon.addr, name).await;
            assert_eq!(edns_of(&upstream, name), [false], "{case}: {name}");
        }
    }
}

/// An upstream that speaks EDNS (its answers to EDNS queries carry OPT, and an RRSIG when
/// DO=1) but answers FORMERR without OPT to EDNS queries for the names in `buggy`, as a
/// server with a bug on one zone's path does.
fn edns_but_not_for(buggy: &'static [&'static str]) -> impl Fn(&Asked) -> Action {
    move |asked| {
        let name = asked.qname();
        if asked.has_edns() && buggy.contains(&name.as_str()) {
            let sections = RawSections::default();
            return Action::Reply(raw_response(asked, ResponseCode::FormErr, 0, &sections));
        }
        let mut answers = vec![raw_rr(&name, 1, 300, &ADDRESS)];
        if asked.dnssec_ok() {
            let signer = wire_name("example.");
            let rrsig = [
                &[0, 1, 13, 2, 0, 0, 1, 44][..],
                &[0; 10],
                &signer,
                &[0xAB; 64],
            ];
            answers.push(raw_rr(&name, 46, 300, &rrsig.concat()));
        }
        let sections = RawSections {
            answers,
            additionals: if asked.has_edns() {
                vec![opt_record()]
            } else {
                Vec::new()
            },
            ..RawSections::default()
        };
        Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
    }
}

/// Asks `name`/A with DO=1; returns the types of the answer records.
async fn ask_signed(daemon: SocketAddr, name: &str) -> Vec<RecordType> {
    let mut msg = query(name, RecordType::A);
    msg.edns.as_mut().unwrap().set_dnssec_ok(true);
    let reply = exchange_udp(daemon, msg).await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{name}: {reply:?}"
    );
    assert_eq!(a_records(&reply), vec!["192.0.2.1"], "{name}");
    reply.answers.iter().map(|r| r.record_type()).collect()
}

#[tokio::test]
async fn edns_trouble_with_one_name_stays_with_that_name() {
    let upstream = Scripted::start(edns_but_not_for(&["bug.example.", "bug2.example."])).await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let signed = |name: &str| {
        let asked = upstream.asked_for(name);
        asked.len() == 1 && asked[0].has_edns() && asked[0].dnssec_ok()
    };
    for bug in ["bug.example.", "bug2.example."] {
        // The name that fails with EDNS is answered through the plain retry (without RRSIGs:
        // that upstream gives none without DO)...
        assert_eq!(ask_signed(daemon.addr, bug).await, [RecordType::A], "{bug}");
        assert_eq!(edns_of(&upstream, bug), [true, false], "{bug}");
        // ...and every other name still goes with EDNS and DO, and gets its RRSIGs.
        for i in 0..3 {
            let name = format!("www{i}.{bug}");
            let types = ask_signed(daemon.addr, &name).await;
            assert_eq!(types, [RecordType::A, RecordType::RRSIG], "{name}");
            assert!(signed(&name), "{name}: {:?}", upstream.asked_for(&name));
        }
    }
}

#[tokio::test]
async fn a_lost_edns_query_does_not_turn_edns_off() {
    // The first EDNS query is lost; every other one is answered, with OPT.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let script = edns_but_not_for(&[]);
    let upstream = Scripted::start(move |asked| {
        let first_lost = asked.has_edns() && !lost.swap(true, std::sync::atomic::Ordering::SeqCst);
        if first_lost {
            Action::Drop
        } else {
            script(asked)
        }
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // The question's next try goes without EDNS (the upstream never showed OPT yet)...
    assert_answered(daemon.addr, "first.example.").await;
    assert_eq!(edns_of(&upstream, "first.example."), [true, false]);
    // ...but one lost datagram is no reason to drop EDNS for every name.
    for name in ["second.example.", "third.example."] {
        assert_eq!(
            ask_signed(daemon.addr, name).await,
            [RecordType::A, RecordType::RRSIG]
        );
        assert_eq!(edns_of(&upstream, name), [true], "{name}");
    }
}

#[tokio::test]
async fn servfail_with_an_opt_record_is_a_failure_not_a_lack_of_edns() {
    let upstream = Scripted::start(|asked| {
        if !asked.has_edns() {
            return Action::Reply(a_answer(asked));
        }
        let sections = RawSections {
            additionals: vec![opt_record()],
            ..RawSections::default()
        };
        Action::Reply(raw_response(asked, ResponseCode::ServFail, 0, &sections))
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let reply = ask(daemon.addr, "www.example.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&reply).map(|e| e.0), Some(0), "{reply:?}");
    assert!(
        edns_of(&upstream, "www.example.").iter().all(|&e| e),
        "an EDNS server that fails a name is not asked without EDNS"
    );
}

#[tokio::test]
async fn an_upstream_that_drops_edns_queries_is_asked_without_edns() {
    let upstream = Scripted::start(|asked| match asked.has_edns() {
        true => Action::Drop,
        false => Action::Reply(a_answer(asked)),
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // Each of the first two questions waits for its EDNS try's wait to pass, then its next
    // try goes without EDNS; two names dropped alike are remembered (one could be a lost
    // datagram).
    for name in ["first.example.", "second.example."] {
        assert_answered(daemon.addr, name).await;
        assert_eq!(edns_of(&upstream, name), [true, false], "{name}");
    }
    let started = Instant::now();
    assert_answered(daemon.addr, "third.example.").await;
    assert_eq!(edns_of(&upstream, "third.example."), [false]);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "no third timeout"
    );
}

#[tokio::test]
async fn no_option_goes_upstream_so_a_strict_upstream_answers() {
    // Strict about EDNS options it does not know: FORMERR, with OPT (it speaks EDNS).
    let upstream = Scripted::start(|asked| {
        let options = asked
            .message
            .edns
            .as_ref()
            .map(|e| e.options().as_ref().len());
        if options.unwrap_or(0) > 0 {
            let sections = RawSections {
                additionals: vec![opt_record()],
                ..RawSections::default()
            };
            return Action::Reply(raw_response(asked, ResponseCode::FormErr, 0, &sections));
        }
        Action::Reply(a_answer(asked))
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // A client that sends an option of its own (a DNS cookie) and DO.
    let mut msg = query("www.example.", RecordType::A);
    let edns = msg.edns.as_mut().unwrap();
    edns.set_dnssec_ok(true);
    edns.options_mut()
        .insert(EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]));
    let reply = exchange_udp(daemon.addr, msg).await;
    assert_eq!(a_records(&reply), vec!["192.0.2.1"]);
    let asked = upstream.asked_for("www.example.");
    assert_eq!(asked.len(), 1);
    let edns = asked[0].message.edns.as_ref().expect("EDNS upstream");
    assert!(edns.options().as_ref().is_empty(), "{edns:?}");
    assert!(
        edns.flags().dnssec_ok,
        "DO goes upstream as the client sent it"
    );
}

/// Records the forwarder does not model: unknown types, types whose RDATA may be empty, and
/// known types with RDATA that hickory's typed decoders would normalise.
fn odd_records() -> Vec<(u16, Vec<u8>)> {
    let svcb = [
        &[0, 1][..],
        &wire_name("svc.example."),
        // port before alpn (out of order), then a private key
        &[
            0, 3, 0, 2, 0x01, 0xbb, 0, 1, 0, 3, 2, b'h', b'2', 0xfd, 0xe8, 0, 1, 0xff,
        ],
    ]
    .concat();
    vec![
        (65280, Vec::new()),
        (10, Vec::new()), // NULL
        (42, Vec::new()), // APL: an empty list (RFC 3123)
        (16, Vec::new()), // TXT without strings
        (65280, vec![0xde, 0xad, 0xbe, 0xef]),
        (16, b"\x00\x05a\x00b\xffc\x03xyz".to_vec()), // an empty string, NUL and 0xff
        (257, b"\x80\x05IsSuEca.example; account=1".to_vec()), // critical flag, tag case
        (257, b"\x00\x05iodefnot a url".to_vec()),
        (64, svcb),
        (65, [&[0, 0][..], &wire_name("Example.")].concat()), // HTTPS alias form
        (52, vec![3, 1, 1, 0xab]),                            // TLSA with a short hash
    ]
}

#[tokio::test]
async fn records_the_forwarder_does_not_model_pass_byte_for_byte() {
    let cases: HashMap<String, (u16, Vec<u8>)> = odd_records()
        .into_iter()
        .enumerate()
        .flat_map(|(i, case)| {
            ["udp", "tcp"].map(|first| (format!("t{i}-{first}.example."), case.clone()))
        })
        .collect();
    let script = cases.clone();
    let upstream = Scripted::start(move |asked| {
        let (rtype, rdata) = &script[&asked.qname()];
        let sections = RawSections {
            answers: vec![raw_rr(&asked.qname(), *rtype, 300, rdata)],
            ..RawSections::default()
        };
        Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for (name, (rtype, rdata)) in &cases {
        // Forwarded over the transport the name says, then from the cache over the other.
        for over_tcp in [name.contains("tcp"), !name.contains("tcp")] {
            let query = raw_query(rand::random(), name, *rtype, true);
            let reply = if over_tcp {
                raw_exchange_tcp(daemon.addr, &query).await
            } else {
                raw_exchange_udp(daemon.addr, &query).await
            };
            let (rcode, answers) = raw_answers(&reply);
            assert_eq!(rcode, 0, "{name} (TCP: {over_tcp})");
            assert_eq!(
                answers,
                vec![(*rtype, rdata.clone())],
                "{name} (TCP: {over_tcp})"
            );
        }
        assert_eq!(upstream.asked_for(name).len(), 1, "{name}: cached");
    }
}

/// What the malformed-answer test's upstream sends for each name.
fn misbehaving(asked: &Asked) -> Action {
    let good = a_answer(asked);
    let name = asked.qname();
    match name.as_str() {
        // An A record whose RDLENGTH runs past the end of the message.
        "bad.example." => {
            let mut record = raw_rr(&name, 1, 300, &ADDRESS);
            let len = record.len();
            record[len - 5] = 9;
            let sections = RawSections {
                answers: vec![record],
                ..RawSections::default()
            };
            Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
        }
        // Cut in the middle of the answer, without TC.
        "cut.example." => Action::Reply(good[..good.len() - 3].to_vec()),
        // The query sent back (QR=0), or a response to another question with our ID, are no
        // answer (RFC 5452 section 9.1): ignored while the try waits on (upstream_tries).
        "echo.example." => Action::Reply(asked.wire.clone()),
        "other.example." => {
            let mut other = good.clone();
            let at = 12 + 1;
            other[at..at + 5].copy_from_slice(b"xther");
            Action::Reply(other)
        }
        // Truncated over UDP; over TCP a length of 200 and 20 octets, then the end.
        "tcp.example." if asked.transport == Transport::Udp => {
            let mut truncated =
                raw_response(asked, ResponseCode::NoError, 0, &RawSections::default());
            truncated[2] |= 0x02;
            Action::Reply(truncated)
        }
        "tcp.example." => Action::Unframed([&[0, 200][..], &good[..20]].concat()),
        // Truncated over UDP and over TCP too: no whole answer to be had.
        "tctc.example." => {
            let mut truncated =
                raw_response(asked, ResponseCode::NoError, 0, &RawSections::default());
            truncated[2] |= 0x02;
            Action::Reply(truncated)
        }
        // Garbage in the additional section only, or an OPT whose options do not parse: the
        // answer stands.
        "extra.example." => Action::Reply(a_answer_with(asked, vec![vec![0xc0, 12, 0, 1, 0xff]])),
        "badopt.example." => {
            let opt = vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 5, 0, 10, 0, 9, 1];
            Action::Reply(a_answer_with(asked, vec![opt]))
        }
        _ => Action::Reply(good),
    }
}

/// Asks `name`/A and checks the answer is SERVFAIL with EDE 23 (Network Error): the upstream
/// answer was malformed, not missing.
async fn assert_malformed(daemon: SocketAddr, name: &str) {
    let reply = ask_expecting(daemon, name, ResponseCode::ServFail).await;
    assert_eq!(
        ede(&reply),
        Some((23, "upstream answer is malformed".to_owned())),
        "{name}"
    );
}

/// The [`misbehaving`] upstream and a daemon asking it with these waits, in milliseconds.
async fn misbehaving_daemon(timeout_ms: u64, query_timeout_ms: u64) -> (Scripted, TestDaemon) {
    let upstream = Scripted::start(misbehaving).await;
    let mut cfg = config(&[upstream.addr]);
    cfg.upstream.timeout_ms = timeout_ms;
    cfg.upstream.query_timeout_ms = query_timeout_ms;
    (upstream, TestDaemon::start(cfg).await)
}

#[tokio::test]
async fn a_malformed_answer_fails_its_question_and_not_the_upstream() {
    // Long waits, so that an answer taken for a timeout would show.
    let (upstream, daemon) = misbehaving_daemon(2_000, 4_000).await;
    // Answers that match the query (ID, QR=1, question) but do not decode. Datagrams that do
    // not match (echo.example., other.example.) are no answer at all: see
    // only_datagrams_that_do_not_answer_give_servfail_with_ede_23.
    let malformed = [
        "bad.example.",
        "cut.example.",
        "tcp.example.",
        "tctc.example.",
    ];
    for name in malformed {
        // Three times: three answers taken for timeouts used to rest the upstream for all
        // (EDE 23, not 22, says the answer was not taken for a timeout).
        for _ in 0..3 {
            assert_malformed(daemon.addr, name).await;
        }
        let transports: Vec<Transport> = upstream
            .asked_for(name)
            .iter()
            .map(|a| a.transport)
            .collect();
        let per_question = if name.starts_with("tc") { 2 } else { 1 };
        assert_eq!(
            transports.len(),
            3 * per_question,
            "{name}: asked once a question"
        );
    }
    for name in ["extra.example.", "badopt.example."] {
        assert_answered(daemon.addr, name).await;
    }
    // Every other name is answered at once, by the upstream, which never rested.
    for i in 0..5 {
        let name = format!("n{i}.example.");
        assert_answered(daemon.addr, &name).await;
        assert_eq!(upstream.asked_for(&name).len(), 1, "{name}");
    }
}

#[tokio::test]
async fn only_datagrams_that_do_not_answer_give_servfail_with_ede_23() {
    let (upstream, daemon) = misbehaving_daemon(200, 600).await;
    for name in ["echo.example.", "other.example."] {
        for _ in 0..3 {
            assert_malformed(daemon.addr, name).await;
        }
        // Once a question: what the upstream sends back for it is no answer, and it would
        // send the same again.
        assert_eq!(upstream.asked_for(name).len(), 3, "{name}");
    }
    // The upstream was heard from, so it never rested: every other name is answered by it.
    for i in 0..5 {
        let name = format!("n{i}.example.");
        assert_answered(daemon.addr, &name).await;
        assert_eq!(upstream.asked_for(&name).len(), 1, "{name}");
    }
}

#[tokio::test]
async fn after_a_malformed_answer_the_next_upstream_is_asked() {
    let garbled = Scripted::start(|asked| {
        let mut reply = a_answer(asked);
        reply.truncate(reply.len() - 2);
        Action::Reply(reply)
    })
    .await;
    let good = Scripted::start(|asked| Action::Reply(a_answer(asked))).await;
    let daemon = TestDaemon::start(config(&[garbled.addr, good.addr])).await;
    for name in ["one.example.", "two.example."] {
        assert_answered(daemon.addr, name).await;
        // The garbled one stays first (it is in service, never measured) and is asked once.
        assert_eq!(garbled.asked_for(name).len(), 1, "{name}");
        assert_eq!(good.asked_for(name).len(), 1, "{name}");
    }
}

#[tokio::test]
async fn without_edns_a_large_answer_comes_over_tcp() {
    let upstream = Scripted::start(|asked| {
        if asked.has_edns() {
            return Action::Reply(raw_response(
                asked,
                ResponseCode::FormErr,
                0,
                &RawSections::default(),
            ));
        }
        if asked.transport == Transport::Udp {
            let mut truncated =
                raw_response(asked, ResponseCode::NoError, 0, &RawSections::default());
            truncated[2] |= 0x02;
            return Action::Reply(truncated);
        }
        let answers = (0..10)
            .map(|i| {
                let mut txt = vec![79];
                txt.extend(format!("{i:02}{}", "x".repeat(77)).bytes());
                raw_rr(&asked.qname(), 16, 300, &txt)
            })
            .collect();
        let sections = RawSections {
            answers,
            ..RawSections::default()
        };
        Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // About 900 bytes: over UDP to a client of 1232 bytes, and over TCP.
    let udp = ask(daemon.addr, "big.example.", RecordType::TXT).await;
    assert_eq!((udp.metadata.truncation, udp.answers.len()), (false, 10));
    let tcp = exchange_tcp(daemon.addr, query("big.example.", RecordType::TXT)).await;
    assert_eq!(tcp.answers.len(), 10);
    let asked: Vec<(Transport, bool)> = upstream
        .asked_for("big.example.")
        .iter()
        .map(|a| (a.transport, a.has_edns()))
        .collect();
    assert_eq!(
        asked,
        [
            (Transport::Udp, true),
            (Transport::Udp, false),
            (Transport::Tcp, false)
        ]
    );
}

/// What the daemons of a test log at INFO and above (a `#[tokio::test]` runtime runs every
/// task on the test's thread, where this subscriber is the default).
struct Logs {
    text: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Self {
        let text = Arc::new(Mutex::new(Vec::new()));
        let writer = text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        Self {
            text,
            _guard: guard,
        }
    }

    /// The lines that contain `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.text.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// Asks `daemon` fresh names until one is answered SERVFAIL or REFUSED within `prompt`;
/// fails the test after [`WAIT`].
async fn wait_for_prompt_failures(daemon: SocketAddr, prompt: Duration) {
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "{daemon} never answered promptly"
        );
        let started = Instant::now();
        let reply = ask(daemon, &format!("wait{i}.example."), RecordType::A).await;
        assert!(matches!(
            reply.metadata.response_code,
            ResponseCode::ServFail | ResponseCode::Refused
        ));
        if started.elapsed() < prompt {
            return;
        }
    }
}

/// Asks `daemon` a few fresh names and checks each is refused or failed within `prompt`.
async fn assert_prompt_failures(daemon: SocketAddr, prompt: Duration) {
    for i in 0..5 {
        let name = format!("after{i}.{}.example.", daemon.port());
        let started = Instant::now();
        let reply = ask(daemon, &name, RecordType::A).await;
        let rcode = reply.metadata.response_code;
        assert!(
            matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused),
            "{name}: {rcode}"
        );
        assert!(
            started.elapsed() < prompt,
            "{name}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_daemon_that_reaches_itself_through_a_relay_stops_using_that_upstream() {
    let logs = Logs::capture();
    let relay = Relay::start().await;
    let daemon = TestDaemon::start(config(&[relay.addr])).await;
    relay.point_to(daemon.addr);
    // The first question goes around until its tries time out (within the query budget of
    // 1.5 s); that is how the loop shows, and the probe that follows finds it.
    let started = Instant::now();
    let first = ask(daemon.addr, "www.example.", RecordType::A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(2));
    let prompt = Duration::from_millis(200);
    wait_for_prompt_failures(daemon.addr, prompt).await;
    assert_prompt_failures(daemon.addr, prompt).await;
    let reply = ask(daemon.addr, "last.example.", RecordType::A).await;
    let (_, text) = ede(&reply).unwrap();
    assert!(text.contains("no upstream"), "{text}");
    let reported = logs.lines_with("a forwarding loop");
    assert_eq!(reported.len(), 1, "{reported:#?}");
    assert!(
        reported[0].contains(&relay.addr.to_string()),
        "{}",
        reported[0]
    );
}

#[tokio::test]
async fn two_daemons_forwarding_to_each_other_find_the_loop() {
    let logs = Logs::capture();
    // Learn a free port for B, so that A can be told about it before B starts.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr = free.local_addr().unwrap();
    drop(free);
    let a = TestDaemon::start(config(&[b_addr])).await;
    let mut b_config = config(&[a.addr]);
    b_config.dns.listen = vec![b_addr];
    let b = TestDaemon::start(b_config).await;
    let first = ask(a.addr, "www.example.", RecordType::A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::ServFail);
    let prompt = Duration::from_millis(200);
    for daemon in [a.addr, b.addr] {
        wait_for_prompt_failures(daemon, prompt).await;
        assert_prompt_failures(daemon, prompt).await;
    }
    // Each daemon reports the loop at most once, naming the other; at least one found it.
    let reported = logs.lines_with("a forwarding loop");
    assert!(!reported.is_empty(), "the loop was never reported");
    for upstream in [a.addr, b.addr] {
        let naming = reported
            .iter()
            .filter(|l| l.contains(&upstream.to_string()));
        assert!(naming.count() <= 1, "{reported:#?}");
    }
}
