//! Local records and what the configuration accepts (issue 11, the newcomer's findings on
//! `[naming.records]`, `naming.tlds` and `upstream.servers`): records an authoritative server
//! would not load stop the daemon with the key, the record and the reason; the generic forms of
//! RFC 3597 are served byte for byte, from the local table and from this node's own signed
//! records; the binary's `--check-config` exits 78 naming the key.

use std::{net::SocketAddr, process::Command};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use p2pdns::{Daemon, naming::parse_record};
use tokio::net::UdpSocket;

use crate::support::{TestDaemon, WAIT, ask, config, p2p_config, resolve_until};

/// The records of `site.p2p`, in every form the parser reads, and what each must put on the
/// wire after the owner: TYPE, CLASS, TTL, RDLENGTH, RDATA.
const SITE: &[(&str, &[u8])] = &[
    (
        "IN A 192.0.2.10",
        &[0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 10],
    ),
    (
        r"60 IN TYPE65534 \# 3 abcdef",
        &[0xff, 0xfe, 0, 1, 0, 0, 0, 60, 0, 3, 0xab, 0xcd, 0xef],
    ),
    (r"TYPE65280 \# 0", &[0xff, 0, 0, 1, 0, 0, 1, 44, 0, 0]),
    (
        r"TXT \# 6 0568656c6c6f",
        &[
            0, 16, 0, 1, 0, 0, 1, 44, 0, 6, 5, b'h', b'e', b'l', b'l', b'o',
        ],
    ),
];

/// Asks `server` for `qtype` at `name` with a raw UDP query and returns the raw answer.
async fn raw_answer(server: SocketAddr, name: &str, qtype: RecordType) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = crate::support::query(name, qtype);
    socket
        .send_to(&query.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("an answer within the bound")
        .unwrap();
    buf.truncate(len);
    buf
}

/// Each record of [`SITE`] answers its own type, with exactly the expected bytes on the wire.
async fn check_site(server: SocketAddr) {
    for (text, wire) in SITE {
        let qtype = RecordType::from(u16::from_be_bytes([wire[0], wire[1]]));
        let raw = raw_answer(server, "site.p2p.", qtype).await;
        // Read from the header: hickory's decoder refuses a record of zero length outside
        // UPDATE messages, which RFC 3597 allows for types it does not know.
        assert_eq!(raw[3] & 0x0f, 0, "{text}: RCODE NOERROR in {raw:02x?}");
        assert_eq!(raw[6..8], [0, 1], "{text}: one answer in {raw:02x?}");
        assert!(
            raw.windows(wire.len()).any(|w| w == *wire),
            "{text}: {wire:02x?} not in {raw:02x?}"
        );
    }
    // A type the name does not hold is NODATA, not an error.
    let none = ask(server, "site.p2p.", RecordType::Unknown(65533)).await;
    assert_eq!(none.metadata.response_code, ResponseCode::NoError);
    assert!(none.answers.is_empty(), "{none:?}");
}

#[tokio::test]
async fn generic_records_are_served_byte_for_byte() {
    let mut cfg = config(&[]);
    cfg.naming.records.insert(
        "site.p2p".into(),
        SITE.iter().map(|(text, _)| (*text).to_owned()).collect(),
    );
    cfg.validate().expect("the records load");
    let daemon = TestDaemon::start(cfg).await;
    check_site(daemon.addr).await;
}

#[tokio::test]
async fn generic_records_are_signed_and_served_byte_for_byte() {
    // P2P on, without peers: this node's own names are answered from its own signed records.
    let daemon = TestDaemon::start(p2p_config(&[])).await;
    let dht = daemon.dht.clone().unwrap();
    let owner = Name::from_ascii("site.p2p.").unwrap();
    let records: Vec<Record> = SITE
        .iter()
        .flat_map(|(text, _)| parse_record(&owner, text, 300).unwrap())
        .collect();
    let signed = dht.publish(&owner, records).await.unwrap();
    assert_eq!(signed.records.len(), SITE.len());
    check_site(daemon.addr).await;
    let unknown = ask(daemon.addr, "site.p2p.", RecordType::Unknown(65534)).await;
    let RData::Unknown { rdata, .. } = &unknown.answers[0].data else {
        panic!("{unknown:?}");
    };
    assert_eq!(rdata.anything, [0xab, 0xcd, 0xef]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_records_travel_through_the_dht_unchanged() {
    let publisher = TestDaemon::start(p2p_config(&[])).await;
    let resolver = TestDaemon::start(p2p_config(&publisher.p2p_addrs)).await;
    let owner = Name::from_ascii("site.p2p.").unwrap();
    let records: Vec<Record> = SITE
        .iter()
        .flat_map(|(text, _)| parse_record(&owner, text, 300).unwrap())
        .collect();
    let dht = publisher.dht.clone().unwrap();
    dht.publish(&owner, records).await.unwrap();
    // Decoded by another node, a record of zero length is still served as one.
    resolve_until(resolver.addr, "site.p2p.", &["192.0.2.10"]).await;
    check_site(resolver.addr).await;
}

/// Records the parser refuses stop the daemon (a configuration error), and the configuration
/// check names the record by its key and index; the message holds the record and the reason.
#[tokio::test]
async fn refused_records_stop_the_daemon_with_key_record_and_reason() {
    for (record, why) in [
        ("A 192.0.2.1 junk", "\"junk\" after the A RDATA"),
        (
            "IN A 192.0.2.1 192.0.2.2",
            "\"192.0.2.2\" after the A RDATA",
        ),
        ("MX 10 mail.site.p2p. extra", "\"extra\" after the MX RDATA"),
        ("CH A 192.0.2.1", "class CH is not served"),
        ("CLASS3 A 192.0.2.1", "class CLASS3 is not served"),
        (
            "2147483648 A 192.0.2.1",
            "TTL 2147483648 is above 2147483647",
        ),
        (
            "4294967296 A 192.0.2.1",
            "TTL 4294967296 is above 2147483647",
        ),
        (
            r"TYPE65534 \# 4 abcdef",
            "announces 4 bytes, the data holds 3",
        ),
        (r"TYPE65534 abcdef", r"write its RDATA as \# LENGTH HEX"),
        (r"A \# 3 c00002", "not A RDATA"),
        (r"TYPE41 \# 0", "meta-type"),
        (r#"TXT "a\256""#, "not an escape"),
    ] {
        let mut cfg = config(&[]);
        cfg.naming.records.insert(
            "site.p2p".into(),
            vec!["A 192.0.2.9".into(), record.to_owned()],
        );
        let error = cfg.validate().unwrap_err().to_string();
        assert!(
            error.contains("naming.records.\"site.p2p\"[1]") && error.contains(why),
            "{record}: {error}"
        );
        let dir = std::env::temp_dir().join(format!("p2pdns-test-{}", rand::random::<u64>()));
        let Err(error) = Daemon::bind(cfg, dir).await else {
            panic!("{record} was accepted");
        };
        assert!(error.is_config(), "{record}: {error}");
        let chain = p2pdns::error::one_line(&error);
        for part in ["naming.records", "site.p2p", &format!("{record:?}"), why] {
            assert!(chain.contains(part), "{record}: {part:?} not in {chain}");
        }
    }
}

/// The binary refuses at `--check-config` (exit code 78) what would break names, each message
/// naming the key.
#[test]
fn check_config_exits_78_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("p2pdns-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    for (toml, key, why) in [
        (
            "[naming.records]\n\"site.p2p\" = [\"A 192.0.2.1\", \"A 192.0.2.2 junk\"]\n",
            "naming.records.\"site.p2p\"[1]",
            "\"junk\" after the A RDATA",
        ),
        (
            "[naming.records]\n\"site.p2p\" = ['TYPE65534 \\# 1 abcd']\n",
            "naming.records.\"site.p2p\"[0]",
            "announces 1 bytes",
        ),
        (
            "[naming]\ntlds = [\"p2p\", \"localhost\"]\n",
            "naming.tlds[1]",
            "special-use TLD",
        ),
        (
            "[naming]\ntlds = [\"com\"]\n",
            "naming.tlds[0]",
            "TLD of the internet",
        ),
        (
            "[upstream]\nservers = [\"0.0.0.0\"]\n",
            "upstream.servers[0]",
            "any address",
        ),
        (
            "[upstream]\nservers = [\"9.9.9.9\", \"127.0.0.1:0\"]\n",
            "upstream.servers[1]",
            "port 0",
        ),
        (
            "[upstream]\nservers = [\"224.0.0.251\"]\n",
            "upstream.servers[0]",
            "multicast",
        ),
    ] {
        let path = dir.join("p2pdns.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_p2pdns"))
            .args(["--config", path.to_str().unwrap(), "run", "--check-config"])
            .env("P2PDNS_DATA_DIR", &dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{toml}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(why),
            "{toml}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
