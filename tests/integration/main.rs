//! The integration tests: every test that needs neither root nor a program from outside the
//! repository, in one binary (one link of libp2p and hickory instead of one per file).
//!
//! Each test runs daemons in this process on 127.0.0.1 port 0 and asks them with hickory's
//! client, so `cargo test`, as an ordinary user, runs all of them in parallel:
//!
//! - [`config_ranges`]: out-of-range numbers, and values that contradict each other, stop the
//!   binary with exit code 78 naming the key, never a panic (issue 15, kind 5).
//! - [`dns`]: the resolver against an authoritative upstream on loopback: forwarding, cache,
//!   EDNS, opcodes, truncation, access control, reload, shutdown.
//! - [`local_records`]: `[naming.records]` in every form the master-file parser reads (RFC
//!   3597's generic ones served byte for byte), what it refuses and how the daemon and
//!   `--check-config` say so; `naming.tlds` and `upstream.servers` values that are refused.
//! - [`p2p`]: small DHT networks; a name published on one node resolves through another.
//! - [`tunnel`]: tunnels between two daemons: a name exposed on one reached through the other.
//! - [`p2p_answers`]: `.p2p` answers follow the DNS algorithm (docs/PROTOCOL.md section 10):
//!   the local table, own signed records and a foreign record answered alike, with the
//!   publisher's checks, the DNS-rebinding screen and the SERVFAIL reasons.
//! - [`dht_fairness`]: the DHT's capacity shared fairly: real names answered while one client
//!   floods the daemon with made-up names and a peer never answers (issue 15, kind 2).
//! - [`forward_fairness`]: forwarded names shared fairly: one client holds at most its share
//!   of `dns.max_inflight`, and other clients' names are answered during its flood of made-up
//!   names under a slow upstream.
//! - [`bounded_maps`]: what peers and clients grow stays bounded: pins, a peer's addresses
//!   (issue 15, kind 3).
//! - [`p2p_rules`]: the rules of `.p2p` names (docs/PROTOCOL.md sections 5 to 7), also against
//!   a hostile node.
//! - [`stored_records`]: a storage node restarted on its data directory still answers for the
//!   names it held and still refuses a second key for them.
//! - [`special_names`]: special-use names (localhost, invalid, onion...) answered here or
//!   forwarded, as the README's table says.
//! - [`durable`]: what the daemon acknowledged is never lost: publishes at once and restarts,
//!   damaged and unreadable state files, a damaged identity key, temporary files of
//!   interrupted writes, one process per data directory (issue 15, kind 4).
//! - [`intro_flood`]: no set of addresses keeps a node out of an introduction server: idle
//!   connections from one address or a thousand, handshaken idle ones from many (issue 15,
//!   kind 5).
//! - [`metrics`]: the Prometheus endpoint scraped over HTTP before and after queries: queries
//!   by source and RCODE, cache, upstream and DHT figures move by what was asked; two nodes
//!   show their peer and connection gauges (issue 16).
//! - [`scripted`]: an upstream whose every answer a test scripts, to the byte (a fixture).
//! - [`upstream_faults`]: scripted upstreams that are strict about EDNS or lack it, answer
//!   records the forwarder does not model or what does not parse; forwarding loops.
//! - [`encrypted_upstreams`]: forwarding over DNS over TLS and DNS over HTTPS to servers on
//!   loopback with certificates from a CA the test makes: many queries on one connection, a
//!   certificate for another name or a key off its pins (SERVFAIL with the reason, failover),
//!   idle connections closed by the server, a broken server rested (issue 16).
//! - [`upstream_tries`]: how one question is tried on the upstreams: hedged tries (a slow
//!   answer to an earlier try is taken), rested upstreams asked when there is no other, and
//!   datagrams that do not answer a query ignored while it listens on.
//! - [`answer_rules`]: what a forwarded answer must be, against scripted upstreams: DNSSEC
//!   header bits passed through, negative answers after a CNAME, answers that do not answer
//!   the question refused and unrelated records removed (issue 11, kinds 2, 6 and 8).
//! - [`tcp_limits`]: hostile TCP clients (issue 15, kind 1): connections capped per client
//!   and in total, oldest idle closed first; pipelining without reading is not read past
//!   `dns.tcp_max_pending`; UDP and forwarding go on while TCP is full.
//! - [`tcp_unread`]: TCP clients that send queries and never read: the kernel holds little for
//!   each connection, and the daemon closes them after `dns.tcp_idle_timeout_secs`.
//! - [`server_sockets`]: the daemon's own sockets: on a wildcard listen address UDP replies
//!   leave from the address asked; during the shutdown new queries are turned away at once
//!   (REFUSED over UDP, refused connections over TCP) while those in flight are answered.
//! - [`alias_chains`]: alias chains leaving their zone: incomplete upstream chains completed,
//!   chains to special-use names answered here.
//! - [`cli_pipes`]: the command-line tool keeps its exit code when its output pipe closes.
//! - [`cli_control`]: the command-line tool against a fake daemon that closes, sends garbage,
//!   an endless line or nothing: each failure has its own message and exit code (issue 15).
//! - [`control_busy`]: `names`, `status` and `pins` answer at once while 150 publishes and
//!   lookups of a stalled network are in flight (issue 15).
//! - [`names_checked`]: entries of `names.toml` edited, cut short, signed by another key or
//!   written twice are not published and are kept aside; the good names keep working (issue 15).
//! - [`cli_reload`]: `p2pdns reload --pid`, the unit's ExecReload, signals only a p2pdns.
//! - [`fuzz_found`]: what the fuzz targets of `tests/fuzz` found, replayed against a daemon
//!   (issue 15, kind 6).
//! - `bench_dht` (with the `test-support` feature, ignored): DHT benchmarks, run on request:
//!   `cargo test --release --features test-support --test integration bench_dht -- --ignored
//!   --nocapture --test-threads 1`.
//!
//! The tests of the real binary with real clients (`dig`, `kdig`, nsd), of network namespaces
//! and of the packaging are the lab's (`tests/lab`), which needs root and Debian packages.

// A test binary exports nothing: its shared helpers are `pub` for the other modules only.
#![allow(unreachable_pub)]
// A test reads as one scenario from set-up to the last check; the 80-line bound is for src/.
#![allow(clippy::too_many_lines)]

mod alias_chains;
mod answer_memo;
mod answer_rules;
#[cfg(feature = "test-support")]
mod bench_dht;
mod bounded_maps;
#[cfg(unix)]
mod cli_control;
#[cfg(unix)]
mod cli_pipes;
#[cfg(target_os = "linux")]
mod cli_reload;
mod config_ranges;
mod control_busy;
mod dht_fairness;
mod dns;
mod durable;
mod encrypted_upstreams;
mod forward_fairness;
mod fuzz_found;
mod intro_flood;
mod local_records;
mod metrics;
mod names_checked;
mod p2p;
mod p2p_answers;
mod p2p_rules;
mod publishing;
mod scripted;
mod server_sockets;
mod special_names;
mod stored_records;
mod support;
mod tcp_limits;
#[cfg(target_os = "linux")]
mod tcp_unread;
mod tunnel;
mod upstream_faults;
mod upstream_tries;
