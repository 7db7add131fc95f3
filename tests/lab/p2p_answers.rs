//! `.p2p` answers against the reference (docs/PROTOCOL.md section 10): nsd serves the zone
//! `p2p.` holding a set of records, a daemon holds the same records in its local table, and
//! every question of a list gets the same answer from both: RCODE, AA, and the answer,
//! authority and additional sections as sets of records with their TTLs, and the question's
//! letter case in the owner names of the name asked. The questions are asked without recursion
//! (RD=0), as of an authoritative server: a CNAME to an ICANN name ends the answer for both.
//!
//! nsd runs as the current user on a loopback port; the daemon runs in this process. Where the
//! two may differ by design, the test says so:
//! - RA: the daemon is also a recursive resolver.
//! - The letter case of other names: nsd compresses names against the question, so a CNAME
//!   target or an additional name sharing its suffix shows the question's case (`Site.p2p.`
//!   for `WWW.Site.p2p.`); the daemon sends them as the record holds them. Names are compared
//!   without regard to case there (RFC 4343).
//! - QTYPE ANY: nsd 4 answers one RRset of its choosing (RFC 8482 section 4.1), the daemon
//!   every RRset (docs/PROTOCOL.md section 10.2, rule 5): nsd's answer and additional data
//!   must be part of the daemon's, the rest equal.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, Record, RecordType},
};
use p2pdns::{Config, Daemon};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::process::{Proc, TempDir, tool};

/// The records both servers hold: owner and `[TTL] TYPE RDATA`, names in RDATA absolute (nsd
/// reads relative ones against the zone's origin, the daemon against the owner).
const RECORDS: &[(&str, &str)] = &[
    ("site.p2p", "A 192.0.2.1"),
    ("site.p2p", "AAAA 2001:db8::1"),
    ("site.p2p", "MX 10 mail.site.p2p."),
    ("site.p2p", "TXT \"hello\""),
    ("mail.site.p2p", "A 192.0.2.25"),
    ("mail.site.p2p", "AAAA 2001:db8::25"),
    ("www.site.p2p", "CNAME site.p2p."),
    ("to-txt.site.p2p", "CNAME txt.site.p2p."),
    ("txt.site.p2p", "TXT \"only text\""),
    ("to-nothing.site.p2p", "CNAME nothing.site.p2p."),
    ("a.b.deep.site.p2p", "A 192.0.2.3"),
    ("*.w.site.p2p", "A 192.0.2.9"),
    ("*.w.site.p2p", "MX 10 mail.site.p2p."),
    ("*.cw.site.p2p", "CNAME site.p2p."),
    ("x.*.odd.site.p2p", "A 192.0.2.5"),
    ("out.site.p2p", "CNAME www.example.test."),
    ("ping.site.p2p", "CNAME pong.site.p2p."),
    ("pong.site.p2p", "CNAME ping.site.p2p."),
    ("c1.site.p2p", "CNAME c2.site.p2p."),
    ("c2.site.p2p", "CNAME c3.site.p2p."),
    ("c3.site.p2p", "CNAME www.site.p2p."),
    ("_http._tcp.site.p2p", "SRV 0 0 80 mail.site.p2p."),
    ("_w._tcp.site.p2p", "SRV 0 0 80 host.w.site.p2p."),
    ("_cw._tcp.site.p2p", "SRV 0 0 80 www.site.p2p."),
    ("dup.site.p2p", "A 192.0.2.7"),
    ("dup.site.p2p", "A 192.0.2.7"),
    ("short.site.p2p", "60 A 192.0.2.60"),
    ("short.site.p2p", "60 A 192.0.2.61"),
    ("null.site.p2p", "MX 0 ."),
    ("other.p2p", "A 192.0.2.50"),
    ("alias.p2p", "CNAME site.p2p."),
    ("to-other.site.p2p", "CNAME other.p2p."),
];

/// The names asked, some in mixed case.
const NAMES: &[&str] = &[
    "p2p.",
    "site.p2p.",
    "SiTe.P2p.",
    "mail.site.p2p.",
    "www.site.p2p.",
    "WWW.Site.p2p.",
    "to-txt.site.p2p.",
    "to-nothing.site.p2p.",
    "deep.site.p2p.",
    "b.deep.site.p2p.",
    "a.b.deep.site.p2p.",
    "c.deep.site.p2p.",
    "nope.site.p2p.",
    "x.mail.site.p2p.",
    "w.site.p2p.",
    "foo.w.site.p2p.",
    "A.b.W.site.p2p.",
    "*.w.site.p2p.",
    "y.cw.site.p2p.",
    "odd.site.p2p.",
    "q.odd.site.p2p.",
    "*.odd.site.p2p.",
    "x.*.odd.site.p2p.",
    "out.site.p2p.",
    "ping.site.p2p.",
    "c1.site.p2p.",
    "_tcp.site.p2p.",
    "_http._tcp.site.p2p.",
    "_w._tcp.site.p2p.",
    "_cw._tcp.site.p2p.",
    "dup.site.p2p.",
    "short.site.p2p.",
    "null.site.p2p.",
    "other.p2p.",
    "alias.p2p.",
    "to-other.site.p2p.",
    "nobody.p2p.",
];

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::MX,
    RecordType::TXT,
    RecordType::CNAME,
    RecordType::SRV,
    RecordType::SOA,
    RecordType::NS,
    RecordType::ANY,
    RecordType::Unknown(65280),
];

/// The apex SOA the daemon synthesizes (docs/PROTOCOL.md section 10).
const APEX_SOA: &str = "p2p. 10 IN SOA localhost. nobody.invalid. 1 3600 600 86400 10";

/// Longest wait for nsd to serve, and for one reply.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// nsd serving the zone `p2p.` with [`RECORDS`] on 127.0.0.1; stopped on drop.
struct ReferenceServer {
    proc: Proc,
    addr: SocketAddr,
    dir: TempDir,
}

impl ReferenceServer {
    fn start() -> Self {
        let dir = TempDir::new("nsd-p2p");
        let mut zone = format!("$ORIGIN p2p.\n$TTL 300\n{APEX_SOA}\n");
        for (owner, text) in RECORDS {
            zone.push_str(&format!("{owner}. {text}\n"));
        }
        dir.write("p2p.zone", &zone);
        // nsd binds UDP and TCP on one port: take one the kernel gives for both.
        let port = loop {
            let udp = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP port 0");
            let port = udp.local_addr().expect("bound address").port();
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break port;
            }
        };
        let d = dir.path().display();
        let conf = dir.write(
            "nsd.conf",
            &format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  username: \"\"\n  zonesdir: \"{d}\"\n  \
                 database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
                 zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n\
                 remote-control:\n  control-enable: no\nzone:\n  name: p2p\n  zonefile: p2p.zone\n"
            ),
        );
        let mut command = Command::new(tool("nsd", "nsd"));
        command.arg("-c").arg(&conf).arg("-d");
        let mut proc = Proc::spawn("nsd", command, dir.path());
        proc.add_log(dir.path().join("nsd.log"));
        Self {
            proc,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
        }
    }

    /// Waits until nsd answers the apex SOA.
    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            assert!(
                self.proc.try_exit().is_none(),
                "nsd exited:\n{}",
                self.proc.output()
            );
            if let Some(reply) = exchange(self.addr, "p2p.", RecordType::SOA).await
                && reply.answers.len() == 1
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nsd did not serve p2p.:\n{}",
                self.proc.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn zone_file(&self) -> PathBuf {
        self.dir.path().join("p2p.zone")
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        // TERM lets nsd take its server and xfrd children down; Proc's drop kills it if not.
        let _ = Command::new("kill")
            .arg(self.proc.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.proc.try_exit().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One question to `server` without recursion or EDNS; `None` when no reply came in time.
async fn exchange(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let mut query = Message::query();
    query.metadata.id = rand::random();
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.ok()?;
    socket.send_to(&query.to_vec().ok()?, server).await.ok()?;
    let mut buf = vec![0; 65_535];
    loop {
        let (len, _) = tokio::time::timeout(REPLY_TIMEOUT, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let reply = Message::from_vec(&buf[..len]).ok()?;
        if reply.metadata.id == query.metadata.id {
            return Some(reply);
        }
    }
}

/// What is compared of a reply.
#[derive(Debug, PartialEq, Eq)]
struct Compared {
    rcode: ResponseCode,
    authoritative: bool,
    truncated: bool,
    /// Do the records owned by the name asked carry it in the question's letter case?
    case_kept: bool,
    /// Records as `name TTL class type data`, lower case.
    answers: BTreeSet<String>,
    authorities: BTreeSet<String>,
    additionals: BTreeSet<String>,
}

impl Compared {
    fn of(reply: &Message, qname: &str) -> Self {
        let qname = Name::from_ascii(qname).expect("a valid name");
        let set = |records: &[Record]| {
            records
                .iter()
                .map(|r| r.to_string().to_ascii_lowercase())
                .collect()
        };
        let case_kept = reply
            .answers
            .iter()
            .filter(|r| r.name == qname)
            .all(|r| r.name.eq_case(&qname));
        Self {
            rcode: reply.metadata.response_code,
            authoritative: reply.metadata.authoritative,
            truncated: reply.metadata.truncation,
            case_kept,
            answers: set(&reply.answers),
            authorities: set(&reply.authorities),
            additionals: set(&reply.additionals),
        }
    }

    /// Does this (nsd's) answer agree with `ours`? For ANY, nsd's RRset and additional data
    /// need only be part of ours.
    fn agrees(&self, ours: &Self, qtype: RecordType) -> bool {
        if qtype != RecordType::ANY {
            return self == ours;
        }
        self.answers.is_subset(&ours.answers)
            && self.additionals.is_subset(&ours.additionals)
            && self.answers.is_empty() == ours.answers.is_empty()
            && (
                self.rcode,
                self.authoritative,
                self.truncated,
                self.case_kept,
            ) == (
                ours.rcode,
                ours.authoritative,
                ours.truncated,
                ours.case_kept,
            )
            && self.authorities == ours.authorities
    }
}

/// A daemon in this process whose local table holds [`RECORDS`], P2P off (so the table is all
/// of `.p2p`), no upstream.
async fn start_daemon(dir: &TempDir) -> (SocketAddr, CancellationToken) {
    let mut config = Config::default();
    config.dns.listen = vec!["127.0.0.1:0".parse().expect("an address")];
    config.upstream.resolv_conf = dir.write("resolv.conf", "");
    config.p2p.enabled = false;
    let mut table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (owner, text) in RECORDS {
        table
            .entry((*owner).to_owned())
            .or_default()
            .push((*text).to_owned());
    }
    config.naming.records = table;
    let daemon = Daemon::bind(config, dir.subdir("data"))
        .await
        .expect("the daemon binds");
    let addr = daemon.dns_addrs()[0];
    let stop = CancellationToken::new();
    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
    tokio::spawn(daemon.run(stop.clone(), reload));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_answers_are_what_nsd_answers_from_the_same_records() {
    let mut nsd = ReferenceServer::start();
    nsd.wait_serving().await;
    let dir = TempDir::new("p2p-answers");
    let (daemon, stop) = start_daemon(&dir).await;

    let mut differences = Vec::new();
    let mut asked = 0;
    for name in NAMES {
        for &qtype in TYPES {
            let reference = exchange(nsd.addr, name, qtype).await;
            let ours = exchange(daemon, name, qtype).await;
            let (Some(reference), Some(ours)) = (reference, ours) else {
                differences.push(format!("{name} {qtype}: no reply from one of them"));
                continue;
            };
            asked += 1;
            let reference = Compared::of(&reference, name);
            let ours = Compared::of(&ours, name);
            if !reference.agrees(&ours, qtype) {
                differences.push(format!(
                    "{name} {qtype}:\n  nsd:    {reference:?}\n  p2pdns: {ours:?}"
                ));
            }
        }
    }
    stop.cancel();
    assert_eq!(asked, NAMES.len() * TYPES.len());
    assert!(
        differences.is_empty(),
        "{} of {asked} answers differ from nsd's (zone {}):\n{}",
        differences.len(),
        nsd.zone_file().display(),
        differences.join("\n")
    );
}
