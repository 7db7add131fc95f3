//! Tests of the upstream set: its own addresses, rests, reloads, and how many log lines a
//! flood of failing queries makes.

use super::*;
use crate::log_limit::LogLines;

#[test]
fn resolv_conf_nameservers() {
    let text = "# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver  2001:db8::53 \n\
                nameserver fe80::1%lo\nnameserver fe80::2%no-such-if0\nnameserver fe80::3\n\
                nameserver bogus\nnameserver 192.0.2.53\nnameserver 192.0.2.54:53\n\
                nameserver 0.0.0.0\nnameserver 224.0.0.1\nnameserver [2001:db8::54]:53\n\
                options edns0\n";
    let lo = nix::net::if_::if_nametoindex("lo").unwrap();
    assert_eq!(
        parse_resolv_conf(text),
        vec![
            "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            format!("[fe80::1%{lo}]:53").parse().unwrap(),
        ]
    );
}

/// A byte that is not UTF-8 (a Latin-1 comment) costs its own line only, as with glibc: it
/// dropped every upstream (SERVFAIL for every forwarded name), also when a running daemon
/// re-read the file.
#[test]
fn a_resolv_conf_byte_that_is_not_utf8_costs_its_line_only() {
    let dir = std::env::temp_dir().join(format!("p2pdns-latin1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resolv.conf");
    std::fs::write(&path, b"# r\xe9solveur local\nnameserver 192.0.2.9\n").unwrap();
    assert_eq!(
        read_resolv_conf(&path).unwrap(),
        vec!["192.0.2.9:53".parse::<SocketAddr>().unwrap()]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn own_addresses_are_recognized() {
    let listen: Vec<SocketAddr> = vec!["127.0.0.1:53".parse().unwrap()];
    assert!(is_own_address("127.0.0.1:53".parse().unwrap(), &listen));
    assert!(!is_own_address("127.0.0.53:53".parse().unwrap(), &listen));
    assert!(!is_own_address("127.0.0.1:5353".parse().unwrap(), &listen));
    assert!(is_own_address(
        "[::ffff:127.0.0.1]:53".parse().unwrap(),
        &listen
    ));
    let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
    assert!(is_own_address("127.0.0.1:53".parse().unwrap(), &wildcard));
    assert!(!is_own_address("[::1]:53".parse().unwrap(), &wildcard));
    // Any address of this host reaches a wildcard listener; others do not.
    assert!(is_host_address("127.0.0.1".parse().unwrap()));
    assert!(!is_host_address("192.0.2.1".parse().unwrap()));
    assert!(!is_own_address("192.0.2.1:53".parse().unwrap(), &wildcard));
}

#[test]
fn failures_rest_an_upstream_and_answers_revive_it() {
    let up = Upstream::new("192.0.2.1:53".parse().unwrap(), &CancellationToken::new());
    assert!(up.usable(0));
    assert!(up.record_failure(1000).is_none());
    assert!(up.record_failure(1000).is_none());
    assert!(up.record_failure(1000).is_some());
    assert!(!up.usable(1000));
    assert!(up.usable(2000));
    assert!(up.health.record_answer(Duration::from_millis(10), 2000));
    assert!(up.usable(2000));
    up.mark_looping();
    assert!(up.is_looping());
    assert!(!up.usable(10_000));
    up.clear_looping();
    assert!(up.usable(10_000));
}

#[tokio::test(start_paused = true)]
async fn a_rested_upstream_is_asked_again_after_its_rest() {
    let set = UpstreamSet::new(&[
        "192.0.2.1:53".parse().unwrap(),
        "192.0.2.2:53".parse().unwrap(),
    ]);
    let list = set.snapshot();
    for _ in 0..health::FAILURES_BEFORE_REST {
        list[0].record_failure(set.now_ms());
    }
    assert_eq!(set.order(&list), vec![1], "the failing one rests");
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(set.order(&list), vec![1]);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        set.order(&list),
        vec![1, 0],
        "back, after the unmeasured one"
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_upstream_rests_the_rested_ones_are_asked_anyway() {
    let set = UpstreamSet::new(&[
        "192.0.2.1:53".parse().unwrap(),
        "192.0.2.2:53".parse().unwrap(),
        "192.0.2.3:53".parse().unwrap(),
    ]);
    let list = set.snapshot();
    // The first rests longest (its second rest in a row), the second wakes first, the
    // third loops.
    for _ in 0..health::FAILURES_BEFORE_REST {
        list[0].record_failure(set.now_ms());
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        list[0].record_failure(set.now_ms()),
        Some(Duration::from_secs(2))
    );
    for _ in 0..health::FAILURES_BEFORE_REST {
        list[1].record_failure(set.now_ms());
    }
    list[2].mark_looping();
    assert!(!list[0].usable(set.now_ms()) && !list[1].usable(set.now_ms()));
    assert_eq!(set.order(&list), vec![1, 0], "soonest to wake first");
    list[0].mark_looping();
    assert_eq!(set.order(&list[..1]), Vec::<usize>::new(), "loops stay out");
    list[0].clear_looping();
    let lone = UpstreamSet::new(&["192.0.2.9:53".parse().unwrap()]);
    let only = lone.snapshot();
    for _ in 0..health::FAILURES_BEFORE_REST {
        only[0].record_failure(lone.now_ms());
    }
    assert_eq!(
        lone.order(&only),
        vec![0],
        "a lone upstream is never left out"
    );
}

#[tokio::test]
async fn a_reload_switches_the_source_and_keeps_what_was_learned() {
    let dir = std::env::temp_dir().join(format!("p2pdns-up-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resolv.conf");
    std::fs::write(&path, "nameserver 192.0.2.1\nnameserver 192.0.2.9\n").unwrap();
    let listen: Vec<SocketAddr> = vec!["192.0.2.9:53".parse().unwrap()];
    let first: SocketAddr = "192.0.2.1:53".parse().unwrap();
    let configured = UpstreamConfig {
        servers: vec![UpstreamAddr(first).into()],
        ..UpstreamConfig::default()
    };
    let follower = UpstreamFollower::new(&configured, &listen);
    let set = follower.set().clone();
    assert_eq!(set.addrs(), vec![first]);
    set.count_answer(&set.snapshot()[0], Duration::from_millis(10));
    let stop = CancellationToken::new();
    let (handle, task) = follower.follow(stop.clone());
    let task = tokio::spawn(task);
    let from_file = UpstreamConfig {
        resolv_conf: path,
        ..UpstreamConfig::default()
    };
    assert!(handle.reload(&from_file).await);
    assert_eq!(set.addrs(), vec![first], "never its own listen address");
    assert!(set.snapshot()[0].srtt_us() > 0, "what was learned stays");
    stop.cancel();
    task.await.unwrap();
    assert!(
        !handle.reload(&configured).await,
        "the follower has stopped"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A flood on a slow, overloaded upstream: for `minutes` (of paused time), one try of a
/// question ends every 10 ms on each upstream of `set`, three in four by timing out, the
/// fourth by a late answer. Returns the rests each upstream was given, in order.
async fn flood(set: &UpstreamSet, minutes: u64) -> Vec<Vec<u64>> {
    let list = set.snapshot();
    let mut rests = vec![Vec::new(); list.len()];
    for step in 0..minutes * 6_000 {
        tokio::time::advance(Duration::from_millis(10)).await;
        for (upstream, rests) in list.iter().zip(&mut rests) {
            if step % 4 == 3 {
                set.count_answer(upstream, Duration::from_millis(900));
            } else if let Some(rest) = set.count_failure(upstream) {
                rests.push(rest.as_secs());
            }
        }
    }
    rests
}

/// Issue 15: under a client flood a slow upstream was rested and back about every
/// millisecond, with a log line each time. Its rests now double while it keeps failing soon
/// after coming back, so it changes state a few times a minute, and so do the log lines.
#[tokio::test(start_paused = true)]
async fn a_flapping_upstream_rests_longer_each_time_and_logs_a_few_lines_a_minute() {
    let logs = LogLines::count();
    let set = UpstreamSet::new(&["192.0.2.1:53".parse().unwrap()]);
    let minutes = 10;
    let rests = flood(&set, minutes).await.remove(0);
    assert_eq!(rests[..6], [1, 2, 4, 8, 16, 30], "{rests:?}");
    assert!(rests[6..].iter().all(|&rest| rest == 30), "{rests:?}");
    // 60,000 tries ended, 45,000 of them in a timeout: 1 + 2 + 4 + 8 + 16 s, then 30 s a rest.
    assert!(rests.len() <= 5 + 20, "{} rests", rests.len());
    // A rest and a return per rest at most, and a summary line per minute.
    let bound = 2 * rests.len() + usize::try_from(minutes).unwrap() + 1;
    assert!(logs.lines() <= bound, "{} log lines", logs.lines());
    assert!(
        logs.lines() >= rests.len(),
        "each rest is logged but in a burst"
    );
}

/// However many upstreams flap at once (resolv.conf may list many), their changes are logged
/// at most `BURST` times a minute together, then summarised.
#[tokio::test(start_paused = true)]
async fn the_changes_of_many_flapping_upstreams_are_logged_at_a_bounded_rate() {
    let logs = LogLines::count();
    let addrs: Vec<UpstreamServer> = (1..=40)
        .map(|i| UpstreamAddr(SocketAddr::from(([192, 0, 2, i], 53))).into())
        .collect();
    let set = UpstreamSet::new(&addrs);
    let minutes = 3;
    let rests = flood(&set, minutes).await;
    let changes: usize = rests.iter().map(Vec::len).sum();
    assert!(changes >= 40 * 8, "{changes} rests");
    let per_minute = usize::try_from(log_limit::BURST).unwrap() + 1;
    let windows = usize::try_from(minutes).unwrap() + 1;
    assert!(
        logs.lines() <= per_minute * windows,
        "{} log lines for {changes} rests",
        logs.lines()
    );
    assert!(
        logs.lines() >= per_minute,
        "the first minute logs its burst"
    );
}
