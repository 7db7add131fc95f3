//! One question asked of the upstreams in hedged tries. Tries follow a plan: up to
//! `upstream.attempts` rounds over the upstreams, best first. A try is one query (fresh ID,
//! fresh socket) to one upstream; it is the *current* try until its answer comes or its wait
//! ([`Upstream::try_wait`]) passes, and only then does the next try start. A try whose wait
//! passed is counted as a timeout for its upstream's health, but is not abandoned: its socket
//! keeps listening, and the first acceptable answer from any try still out serves the
//! question (an upstream slower than its measured RTT says is still heard). Every socket is
//! closed when the question is answered or its budget (`upstream.query_timeout_ms`) ends, so a
//! question holds at most one socket per step of the plan (attempts × upstreams).
//!
//! What each try's end means: an acceptable answer ends the question; an answer that is
//! malformed or does not answer the question (or, by the end of the try's wait, only
//! datagrams with its ID that do not answer it: `crate::dns::exchange`) rules its upstream
//! out for this question (it would say the same) but ends no other try; a failure RCODE is
//! that upstream's, and its next round still asks it; a truncated UDP answer is followed over
//! TCP within the same try (waiting up to `upstream.timeout_ms`). A question whose tries have
//! all gone out and passed their waits ends when its budget does, unless an answer comes. RTT samples come only from the try an answer belongs to, timed from
//! that try's own query: with a fresh ID per try, an answer is never ambiguous (RFC 6298
//! section 3, Karn's algorithm, is about the ambiguity this avoids). EDNS fallbacks are
//! [`super::edns`]'s.
//!
//! A try of an encrypted upstream is a query handed to its session ([`super::session`]),
//! which sends it on the upstream's connection; it ends, and counts, as a plain try does. A
//! failure to connect counts as a timeout would; a certificate not accepted also makes
//! [`AskError::Certificate`] the question's error, unless a later failure replaces it.

use std::{
    fmt::Display,
    future::poll_fn,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::LowerName,
};
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::{
    Upstream, UpstreamSet,
    edns::{Evidence, refuses_edns},
    session::{EncryptedTry, SessionError},
};
use crate::dns::exchange::{ExchangeError, Exchanged, TcpTry, UdpTry};

/// Why the upstreams gave no acceptable answer to a question: the latest failure that was not
/// a timeout, else a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// No upstream is configured, or every one sends our queries back to us.
    #[error("no usable upstream DNS server")]
    NoUpstreams,
    /// No try was answered within the question's budget.
    #[error("no upstream answered in time")]
    Timeout,
    /// An upstream answered with this failure RCODE.
    #[error("an upstream answered {0}")]
    Rcode(ResponseCode),
    /// An upstream's answer did not decode, or only datagrams that do not answer came back.
    #[error("an upstream answer is malformed")]
    Malformed,
    /// An upstream's NOERROR or NXDOMAIN answer was refused by the caller's judge.
    #[error("an upstream answer did not answer the question")]
    Mismatch,
    /// This machine ran out of sockets or buffers before a query could go out
    /// ([`ExchangeError::LocalResources`]); no upstream is blamed for it.
    #[error("out of local sockets or buffers")]
    LocalResources,
    /// An encrypted upstream's certificate was not accepted (its name, issuer, dates or pin):
    /// the reason is logged once per spell ([`SessionError::Certificate`]).
    #[error("an upstream's certificate was not accepted")]
    Certificate,
}

/// The bounds of one question's tries (from `[upstream]`).
#[derive(Debug, Clone, Copy)]
pub struct TryPlan {
    /// Rounds over the upstreams (`upstream.attempts`).
    pub attempts: u32,
    /// Longest try wait, and the wait for a TCP follow-up (`upstream.timeout_ms`).
    pub max_wait: Duration,
    /// When the question is given up, whatever is still out (`upstream.query_timeout_ms`
    /// after it was first asked).
    pub deadline: Instant,
}

impl UpstreamSet {
    /// Asks the upstreams the question for `qname` that `query` builds (with an OPT record
    /// when given true; a fresh ID at each call), in hedged tries (see the module). `judge`
    /// checks each NOERROR or NXDOMAIN answer (and may scrub it); what it refuses rules that
    /// upstream out for this question. Answers and timeouts are counted into each upstream's
    /// health; malformed answers and failure RCODEs are not (the server is up).
    ///
    /// # Errors
    /// [`AskError`]: why no try gave an acceptable answer.
    pub async fn ask<E: Display>(
        &self,
        plan: TryPlan,
        qname: &LowerName,
        query: impl Fn(bool) -> Message,
        mut judge: impl FnMut(&mut Message) -> Result<(), E>,
    ) -> Result<Exchanged, AskError> {
        let upstreams = self.snapshot();
        let order = self.order(&upstreams);
        if order.is_empty() {
            return Err(AskError::NoUpstreams);
        }
        let mut tries = Tries {
            set: self,
            steps: order.len() * plan.attempts as usize,
            order,
            upstreams,
            qname,
            max_wait: plan.max_wait,
            deadline: plan.deadline,
            next_step: 0,
            flight: Vec::new(),
            current: None,
            next_id: 0,
            ruled_out: Vec::new(),
            dropped: Vec::new(),
            refused: Vec::new(),
            last_error: AskError::Timeout,
        };
        loop {
            if tries.current.is_none() {
                tries.start_next(&query);
            }
            if tries.flight.is_empty() {
                return Err(tries.last_error);
            }
            match tries.next_event(plan.deadline).await {
                Event::Budget => return Err(tries.last_error),
                Event::Overdue => tries.overdue(),
                Event::Landed(index, result) => {
                    if let Some(answer) = tries.landed(index, result, &query, &mut judge) {
                        return Ok(answer);
                    }
                }
            }
        }
    }
}

/// One try out: a query sent to one upstream, its answer awaited.
struct Try {
    meta: TryMeta,
    leg: Leg,
}

/// What a try is, apart from where its answer is awaited.
#[derive(Debug, Clone, Copy)]
struct TryMeta {
    id: u32,
    /// Index of its upstream in [`Tries::upstreams`].
    upstream: usize,
    /// The query carries an OPT record.
    edns: bool,
    /// When its query was sent: its RTT sample counts from here.
    sent: Instant,
    /// Its wait passed (and was counted).
    overdue: bool,
}

/// Where a try's answer is awaited.
enum Leg {
    Udp(Box<UdpTry>),
    /// Asked again over TCP after a truncated UDP answer.
    Tcp(TcpTry),
    /// Asked of an encrypted upstream's session.
    Encrypted(EncryptedTry),
}

/// What happened next to a question's tries.
enum Event {
    /// The try at this index of [`Tries::flight`] ended so.
    Landed(usize, Result<Exchanged, SessionError>),
    /// The current try's wait passed.
    Overdue,
    /// The question's budget is spent.
    Budget,
}

/// The state of one question's tries; dropped (closing every socket) when the question ends.
struct Tries<'a> {
    set: &'a UpstreamSet,
    upstreams: Arc<[Arc<Upstream>]>,
    qname: &'a LowerName,
    /// The upstreams to try, best first; the plan is `steps` tries through it, round after
    /// round.
    order: Vec<usize>,
    steps: usize,
    next_step: usize,
    max_wait: Duration,
    /// The question's budget ends then.
    deadline: Instant,
    /// The tries out.
    flight: Vec<Try>,
    /// The try whose wait is running, and when it ends.
    current: Option<(u32, Instant)>,
    next_id: u32,
    /// Upstreams not to ask again: their answer was malformed or not to the question.
    ruled_out: Vec<usize>,
    /// Upstreams whose EDNS try went unanswered within its wait, never having shown OPT.
    dropped: Vec<usize>,
    /// Upstreams that refused an EDNS query for this question, with the RCODE they gave.
    refused: Vec<(usize, ResponseCode)>,
    last_error: AskError,
}

impl Tries<'_> {
    /// Starts the next try of the plan, skipping upstreams ruled out, found looping, or
    /// rested by this question's own timeouts while another is still usable.
    fn start_next(&mut self, query: &impl Fn(bool) -> Message) {
        while self.next_step < self.steps {
            let index = self.order[self.next_step % self.order.len()];
            self.next_step += 1;
            if self.skip(index) {
                continue;
            }
            let upstream = &self.upstreams[index];
            let edns = upstream.edns.use_edns(self.set.now_ms())
                && !self.dropped.contains(&index)
                && self.refusal(index).is_none();
            if self.launch(index, edns, query, true) {
                return;
            }
        }
    }

    fn skip(&self, index: usize) -> bool {
        let upstream = &self.upstreams[index];
        if self.ruled_out.contains(&index) || upstream.is_looping() {
            return true;
        }
        let now = self.set.now_ms();
        !upstream.usable(now)
            && self.order.iter().any(|&other| {
                other != index
                    && !self.ruled_out.contains(&other)
                    && self.upstreams[other].usable(now)
            })
    }

    /// Sends a try to the upstream at `index`, as the current try or not; false if it could
    /// not be sent.
    fn launch(
        &mut self,
        index: usize,
        edns: bool,
        query: &impl Fn(bool) -> Message,
        current: bool,
    ) -> bool {
        let upstream = self.upstreams[index].clone();
        let leg = match &upstream.session {
            Some(session) => Leg::Encrypted(session.ask(query(edns), self.deadline)),
            None => match UdpTry::send(upstream.addr, query(edns)) {
                Ok(udp) => Leg::Udp(Box::new(udp)),
                Err(error) => {
                    debug!(%upstream, %error, name = %self.qname, "upstream query not sent");
                    match error {
                        ExchangeError::Io(_) => {
                            self.set.count_failure(&upstream);
                        }
                        ExchangeError::LocalResources(_) => {
                            self.last_error = AskError::LocalResources;
                        }
                        _ => {}
                    }
                    return false;
                }
            },
        };
        if let Some(meters) = upstream.meters() {
            meters.sent();
        }
        let id = self.next_id;
        self.next_id += 1;
        let sent = Instant::now();
        let meta = TryMeta {
            id,
            upstream: index,
            edns,
            sent,
            overdue: false,
        };
        self.flight.push(Try { meta, leg });
        if current {
            self.current = Some((id, sent + upstream.try_wait(self.max_wait)));
        }
        true
    }

    /// Waits for a try to end, the current try's wait to pass, or the budget to end.
    async fn next_event(&mut self, budget: Instant) -> Event {
        let overdue_at = self.current.map_or(budget, |(_, at)| at);
        let flight = &mut self.flight;
        tokio::select! {
            biased;
            (index, result) = poll_fn(|cx| poll_flight(flight, cx)) => {
                Event::Landed(index, result)
            }
            () = sleep_until(overdue_at), if self.current.is_some() => Event::Overdue,
            () = sleep_until(budget) => Event::Budget,
        }
    }

    /// The current try's wait passed: the next try may start, and this one keeps listening.
    /// Counted as a timeout for its upstream's health, unless datagrams with its ID that do
    /// not answer it came: then the upstream is up, and its answer malformed for this question.
    fn overdue(&mut self) {
        let Some((id, _)) = self.current.take() else {
            return;
        };
        let Some(at) = self.flight.iter().position(|t| t.meta.id == id) else {
            return;
        };
        let attempt = &mut self.flight[at];
        attempt.meta.overdue = true;
        let (index, edns) = (attempt.meta.upstream, attempt.meta.edns);
        let upstream = self.upstreams[index].clone();
        let junk = match &attempt.leg {
            Leg::Udp(udp) => udp.junk(),
            Leg::Tcp(_) | Leg::Encrypted(_) => None,
        };
        if let Some(why) = junk {
            debug!(%upstream, %why, name = %self.qname, "only datagrams that do not answer came back");
            self.rule_out(index, AskError::Malformed);
            return;
        }
        debug!(%upstream, name = %self.qname, "no answer within the try's wait; asking on, still listening");
        let on_udp = matches!(attempt.leg, Leg::Udp(_));
        if on_udp && edns && !upstream.edns.seen() && !self.dropped.contains(&index) {
            self.dropped.push(index);
        }
        self.set.count_failure(&upstream);
    }

    /// The try at `at` in the flight ended with `result`; returns the answer that serves the
    /// question, if this is it.
    fn landed<E: Display>(
        &mut self,
        at: usize,
        result: Result<Exchanged, SessionError>,
        query: &impl Fn(bool) -> Message,
        judge: &mut impl FnMut(&mut Message) -> Result<(), E>,
    ) -> Option<Exchanged> {
        let Try { meta, leg } = self.flight.swap_remove(at);
        let was_current = self.current.is_some_and(|(current, _)| current == meta.id);
        if was_current {
            self.current = None;
        }
        let index = meta.upstream;
        let upstream = self.upstreams[index].clone();
        match result {
            Ok(answer) => {
                if let Leg::Encrypted(_) = leg {
                    self.set.count_answer(&upstream, meta.sent.elapsed());
                }
                if let Leg::Udp(udp) = leg {
                    self.set.count_answer(&upstream, meta.sent.elapsed());
                    if answer.message.metadata.truncation {
                        debug!(%upstream, name = %self.qname, "truncated answer, asking again over TCP");
                        if was_current {
                            self.current = Some((meta.id, Instant::now() + self.max_wait));
                        }
                        let leg = Leg::Tcp(udp.into_tcp());
                        self.flight.push(Try { meta, leg });
                        return None;
                    }
                }
                self.answered(index, meta.edns, was_current, answer, query, judge)
            }
            Err(SessionError::Exchange(ExchangeError::Malformed(why))) => {
                debug!(%upstream, name = %self.qname, error = &why as &dyn std::error::Error, "malformed upstream answer");
                self.rule_out(index, AskError::Malformed);
                None
            }
            Err(SessionError::Exchange(ExchangeError::LocalResources(error))) => {
                debug!(%upstream, %error, name = %self.qname, "out of local sockets; the upstream is not blamed");
                self.last_error = AskError::LocalResources;
                None
            }
            Err(error) => {
                debug!(%upstream, %error, name = %self.qname, "upstream exchange failed");
                if let SessionError::Certificate(_) = error {
                    self.last_error = AskError::Certificate;
                }
                if !meta.overdue {
                    self.set.count_failure(&upstream);
                }
                None
            }
        }
    }

    /// An answer that decoded came from the upstream at `index` to a query with EDNS or
    /// without: EDNS evidence, then the RCODE and the judge.
    fn answered<E: Display>(
        &mut self,
        index: usize,
        edns: bool,
        was_current: bool,
        mut answer: Exchanged,
        query: &impl Fn(bool) -> Message,
        judge: &mut impl FnMut(&mut Message) -> Result<(), E>,
    ) -> Option<Exchanged> {
        let upstream = self.upstreams[index].clone();
        let rcode = answer.message.metadata.response_code;
        if !edns {
            self.plain_answered(index, rcode);
        } else if answer.message.edns.is_some() {
            upstream.edns.saw_opt();
        } else if refuses_edns(&answer.message) && self.refusal(index).is_none() {
            debug!(%upstream, %rcode, name = %self.qname, "EDNS query answered without OPT; asking again without EDNS");
            self.refused.push((index, rcode));
            self.last_error = AskError::Rcode(rcode);
            self.launch(index, false, query, was_current);
            return None;
        }
        match rcode {
            ResponseCode::NoError | ResponseCode::NXDomain => match judge(&mut answer.message) {
                Ok(()) => return Some(answer),
                Err(why) => {
                    debug!(%upstream, %why, name = %self.qname, "upstream answer refused");
                    self.rule_out(index, AskError::Mismatch);
                }
            },
            rcode => {
                debug!(%upstream, %rcode, name = %self.qname, "upstream failed the query");
                self.last_error = AskError::Rcode(rcode);
            }
        }
        None
    }

    /// A plain query to the upstream at `index` was answered `rcode`: evidence against its
    /// EDNS if this question's EDNS query was refused otherwise, or went unanswered.
    fn plain_answered(&mut self, index: usize, rcode: ResponseCode) {
        let upstream = &self.upstreams[index];
        let evidence = match self.refusal(index) {
            Some(refused) if refused != rcode => Evidence::Refused,
            Some(_) => return,
            None if self.dropped.contains(&index) && !upstream.edns.seen() => Evidence::Dropped,
            None => return,
        };
        let now = self.set.now_ms();
        upstream
            .edns
            .strike(upstream.addr, self.qname, now, evidence);
    }

    /// The RCODE with which the upstream at `index` refused this question's EDNS query.
    fn refusal(&self, index: usize) -> Option<ResponseCode> {
        self.refused
            .iter()
            .find(|(refused, _)| *refused == index)
            .map(|&(_, rcode)| rcode)
    }

    /// The upstream at `index` answered, but badly (`why`): not asked again for this question.
    fn rule_out(&mut self, index: usize, why: AskError) {
        if !self.ruled_out.contains(&index) {
            self.ruled_out.push(index);
        }
        self.last_error = why;
    }
}

/// Polls every try of `flight` once; the first that ended, with its index.
fn poll_flight(
    flight: &mut [Try],
    cx: &mut Context<'_>,
) -> Poll<(usize, Result<Exchanged, SessionError>)> {
    for (index, attempt) in flight.iter_mut().enumerate() {
        let polled = match &mut attempt.leg {
            Leg::Udp(udp) => udp.poll_answer(cx).map_err(SessionError::Exchange),
            Leg::Tcp(tcp) => tcp.as_mut().poll(cx).map_err(SessionError::Exchange),
            Leg::Encrypted(session) => session.as_mut().poll(cx),
        };
        if let Poll::Ready(result) = polled {
            return Poll::Ready((index, result));
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::exchange::MAX_MESSAGE;
    use hickory_proto::{
        op::{MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };
    use tokio::net::UdpSocket;

    fn question() -> LowerName {
        LowerName::new(&Name::from_ascii("www.example.").unwrap())
    }

    fn query(edns: bool) -> Message {
        let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from(&question()), RecordType::A));
        if edns {
            msg.set_edns(hickory_proto::op::Edns::new());
        }
        msg
    }

    /// A UDP server on loopback that counts the queries it gets and answers the first one
    /// (with no record) after `delay`, if given; the others never.
    async fn server(delay: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            while let Ok((len, client)) = socket.recv_from(&mut buf).await {
                let mut reply = Message::from_vec(&buf[..len]).unwrap();
                reply.metadata.message_type = MessageType::Response;
                let (socket, wire) = (socket.clone(), reply.to_vec().unwrap());
                if let (0, Some(delay)) = (counted.fetch_add(1, Ordering::SeqCst), delay) {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        socket.send_to(&wire, client).await.unwrap();
                    });
                }
            }
        });
        (addr, count)
    }

    fn plain(addr: SocketAddr) -> crate::config::UpstreamServer {
        crate::config::UpstreamAddr(addr).into()
    }

    fn plan(attempts: u32, max_wait: Duration, budget: Duration) -> TryPlan {
        TryPlan {
            attempts,
            max_wait,
            deadline: Instant::now() + budget,
        }
    }

    async fn ask(set: &UpstreamSet, plan: TryPlan) -> Result<Exchanged, AskError> {
        set.ask(plan, &question(), query, |_: &mut Message| {
            Ok::<(), AskError>(())
        })
        .await
    }

    #[tokio::test]
    async fn a_late_answer_is_timed_from_its_own_try() {
        let delay = Duration::from_millis(900);
        let (addr, count) = server(Some(delay)).await;
        let set = UpstreamSet::new(&[plain(addr)]);
        let upstream = set.snapshot()[0].clone();
        set.count_answer(&upstream, Duration::from_millis(10));
        // Waits of 400 ms: the second try goes at 400 ms, the first one's answer comes at
        // 900 ms and serves.
        let plan = plan(2, Duration::from_secs(1), Duration::from_secs(5));
        ask(&set, plan).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2, "hedged");
        // Two timeouts doubled the SRTT of 10 ms twice; the sample is the first try's RTT, at
        // least `delay` (from the second try it would be 400 ms less).
        let least = 40_000 / 8 * 7 + u32::try_from(delay.as_micros()).unwrap() / 8;
        assert!(upstream.srtt_us() >= least, "{} µs", upstream.srtt_us());
        assert_eq!(upstream.health.failures(), 0, "an answer came");
    }

    #[tokio::test]
    async fn tries_are_bounded_by_rounds_times_upstreams() {
        let (first, first_count) = server(None).await;
        let (second, second_count) = server(None).await;
        let set = UpstreamSet::new(&[plain(first), plain(second)]);
        let plan = plan(3, Duration::from_millis(30), Duration::from_millis(600));
        assert_eq!(ask(&set, plan).await.unwrap_err(), AskError::Timeout);
        for count in [first_count, second_count] {
            assert_eq!(count.load(Ordering::SeqCst), 3, "once a round");
        }
    }
}
