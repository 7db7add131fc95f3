#!/usr/bin/env python3
"""A misbehaving DNS upstream for tests/bench/dns-faults.sh (issue 11's forwarding faults).

One server (UDP and TCP on one loopback address and port) plays every fault; which one is
chosen by the query name, so a resolver needs nothing but "forward everything here":

    <anything>.<scenario>.example.    the scenario's behaviour (table SCENARIOS below)
    any name outside example.         a "public" upstream: A 198.51.100.53, AAAA 2001:db8::53,
                                      PTR public.example., SVCB 1 dns.public.example.; this is
                                      what a special-use name (localhost, x.onion...) gets when
                                      it leaks upstream

Names under example. with a scenario not in the table (probe, bank, ...) get the normal answer:
A 192.0.2.1, AAAA 2001:db8::1, TXT "ok", other types NODATA with the example. SOA (TTL 3600,
MINIMUM 2). Normal answers carry an OPT record when the query did (DO echoed) and set RA; AA is
clear, as from a recursive server.

Answers are built byte by byte (no DNS library), so they can be anything a broken server sends.
Python 3 standard library only.

Usage:
    faulty_upstream.py serve --listen 127.0.0.1:PORT [--log FILE]
        Serve until SIGTERM/SIGINT. Every query is logged to FILE (default stderr), one line:
        "<udp|tcp> <qname lower case> <qtype> rd=. cd=. ad=. edns=. do=. size=. opts=. -> <action>"
    faulty_upstream.py rdata SCENARIO
        Print "TYPE HEX" for a record-passthrough scenario: the type number and the RDATA the
        upstream sends, in the form dig +unknownformat shows (\\# LEN HEX), to compare with.
    faulty_upstream.py list
        Print the scenarios with a one-line description.
"""

import argparse
import signal
import socket
import socketserver
import struct
import sys
import threading

# --- wire format -------------------------------------------------------------------------------

TYPE = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "NULL": 10, "PTR": 12, "TXT": 16, "AAAA": 28,
        "APL": 42, "OPT": 41, "SVCB": 64, "HTTPS": 65, "CAA": 257}
RCODE = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}
# EDNS options a strict upstream understands (RFC 6891 registry): NSID, client subnet, cookie,
# TCP keepalive, padding, extended error. Anything else makes edns-strict answer FORMERR.
KNOWN_OPTIONS = {3, 8, 10, 11, 12, 15}

SOA_OWNER = "example."
SOA_TTL = 3600
SOA_MINIMUM = 2
CNAME_TTL = 3600
TTL = 300


def name(text):
    """Uncompressed wire form of a domain name in presentation form (no escapes)."""
    out = b""
    for label in text.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def rr(owner, rtype, rdata, ttl=TTL, cls=1):
    """One resource record (class IN unless told); owner is a name or wire bytes (a pointer)."""
    owner_wire = owner if isinstance(owner, bytes) else name(owner)
    return owner_wire + struct.pack("!HHIH", rtype, cls, ttl, len(rdata)) + rdata


def soa_rr():
    rdata = name("ns.example.") + name("hostmaster.example.") + struct.pack(
        "!IIIII", 1, 3600, 600, 86400, SOA_MINIMUM)
    return rr(SOA_OWNER, TYPE["SOA"], rdata, SOA_TTL)


def txt(*strings):
    return b"".join(bytes([len(s)]) + s for s in strings)


def aaaa(text):
    return socket.inet_pton(socket.AF_INET6, text)


def a(text):
    return socket.inet_aton(text)


class Query:
    """The parts of a query the scenarios look at; raises ValueError on what does not parse."""

    def __init__(self, wire):
        if len(wire) < 12:
            raise ValueError("short header")
        self.wire = wire
        self.id, self.flags, qd, an, ns, ar = struct.unpack("!HHHHHH", wire[:12])
        if qd != 1:
            raise ValueError("QDCOUNT %d" % qd)
        labels, pos = read_name(wire, 12)
        self.qname = ".".join(labels).lower() + "."
        self.qtype, self.qclass = struct.unpack("!HH", wire[pos:pos + 4])
        self.question = wire[12:pos + 4]
        pos += 4
        self.opt = None  # (udp size, do bit, [option codes])
        for _ in range(an + ns + ar):
            _, pos = read_name(wire, pos)
            rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", wire[pos:pos + 10])
            pos += 10
            if rtype == TYPE["OPT"]:
                codes, p = [], pos
                while p + 4 <= pos + rdlen:
                    code, length = struct.unpack("!HH", wire[p:p + 4])
                    codes.append(code)
                    p += 4 + length
                self.opt = (rclass, bool(ttl & 0x8000), codes)
            pos += rdlen
        self.labels = self.qname.rstrip(".").split(".") if self.qname != "." else []

    rd = property(lambda self: bool(self.flags & 0x0100))
    cd = property(lambda self: bool(self.flags & 0x0010))
    ad = property(lambda self: bool(self.flags & 0x0020))

    def describe(self):
        size, do, codes = self.opt if self.opt else (0, False, [])
        return "%s %d rd=%d cd=%d ad=%d edns=%d do=%d size=%d opts=%s" % (
            self.qname, self.qtype, self.rd, self.cd, self.ad, self.opt is not None, do, size,
            ",".join(map(str, codes)) or "-")


def read_name(wire, pos):
    """Labels of the name at pos (compression followed, loops refused) and the end position."""
    labels, end, hops = [], None, 0
    while True:
        if pos >= len(wire):
            raise ValueError("name past the end")
        length = wire[pos]
        if length & 0xC0 == 0xC0:
            hops += 1
            if hops > 20:
                raise ValueError("compression loop")
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | wire[pos + 1]
            continue
        if length == 0:
            return labels, (end if end is not None else pos + 1)
        labels.append(wire[pos + 1:pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length


class Reply:
    """An answer to build from a query: rcode, sections, and the header/OPT choices."""

    def __init__(self, rcode="NOERROR", answer=(), authority=(), ad=False, opt=True, note=""):
        self.rcode, self.answer, self.authority = rcode, list(answer), list(authority)
        self.ad, self.opt, self.note = ad, opt, note

    def wire(self, q):
        flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | (q.flags & 0x0010)  # QR, opcode, RD, RA, CD
        if self.ad:
            flags |= 0x0020
        flags |= RCODE[self.rcode]
        additional = []
        if self.opt and q.opt:
            additional.append(b"\x00" + struct.pack("!HHIH", TYPE["OPT"], 1232,
                                                    0x8000 if q.opt[1] else 0, 0))
        header = struct.pack("!HHHHHH", q.id, flags, 1, len(self.answer), len(self.authority),
                             len(additional))
        return header + q.question + b"".join(self.answer + self.authority + additional)

    def describe(self):
        return "%s an=%d ns=%d%s%s" % (self.rcode, len(self.answer), len(self.authority),
                                       " ad" if self.ad else "", " " + self.note if self.note else "")


# --- scenarios ---------------------------------------------------------------------------------

def normal(q, v4="192.0.2.1", v6="2001:db8::1", **kw):
    if q.qtype == TYPE["A"]:
        return Reply(answer=[rr(q.qname, TYPE["A"], a(v4))], **kw)
    if q.qtype == TYPE["AAAA"]:
        return Reply(answer=[rr(q.qname, TYPE["AAAA"], aaaa(v6))], **kw)
    if q.qtype == TYPE["TXT"]:
        return Reply(answer=[rr(q.qname, TYPE["TXT"], txt(b"ok"))], **kw)
    return Reply(authority=[soa_rr()], **kw)


def public(q):
    """A name outside example.: what a special-use name gets if it is forwarded."""
    rdata = {TYPE["A"]: a("198.51.100.53"), TYPE["AAAA"]: aaaa("2001:db8::53"),
             TYPE["PTR"]: name("public.example."),
             TYPE["SVCB"]: struct.pack("!H", 1) + name("dns.public.example.")}.get(q.qtype)
    if rdata is None:
        return Reply(authority=[soa_rr()], note="public NODATA")
    return Reply(answer=[rr(q.qname, q.qtype, rdata)], note="public")


def edns_refused(rcode):
    """FORMERR/NOTIMP without OPT to any query with OPT, normal answers to plain queries."""
    return lambda q: Reply(rcode, opt=False) if q.opt else normal(q)


def edns_strict(q):
    """FORMERR (with OPT: it speaks EDNS) to a query carrying an option it does not know."""
    if q.opt and any(code not in KNOWN_OPTIONS for code in q.opt[2]):
        return Reply("FORMERR", note="unknown option")
    return normal(q)


def flags_echo(q):
    """TXT: what the upstream saw in the query (flags, EDNS, DO, options)."""
    if q.qtype != TYPE["TXT"]:
        return normal(q)
    seen = q.describe().split(" ", 2)[2]
    return Reply(answer=[rr(q.qname, TYPE["TXT"], txt(seen.encode()), ttl=60)])


def cd_only(q):
    """SERVFAIL unless CD=1 (as a validating upstream does for bogus data), then the data."""
    return normal(q, v4="192.0.2.2") if q.cd else Reply("SERVFAIL")


def cname_negative(rcode):
    """<x> CNAME target.<x> (TTL 3600); the target has no data (NODATA) or does not exist."""
    def play(q):
        if q.labels[0] == "target":
            if rcode == "NOERROR" and q.qtype == TYPE["A"]:
                return Reply(answer=[rr(q.qname, TYPE["A"], a("192.0.2.7"))])
            return Reply(rcode, authority=[soa_rr()])
        target = "target." + q.qname
        chain = [rr(q.qname, TYPE["CNAME"], name(target), CNAME_TTL)]
        if rcode == "NOERROR" and q.qtype == TYPE["A"]:
            return Reply(answer=chain + [rr(target, TYPE["A"], a("192.0.2.7"))])
        return Reply(rcode, answer=chain, authority=[soa_rr()])
    return play


def injected_owner(q):
    """The unrelated name an upstream slips into the answer: www.<first label>.bank.example."""
    return "www.%s.bank.example." % q.labels[0]


def wrong_type(q):
    """A AAAA question answered with an A record for the same name."""
    if q.qtype == TYPE["AAAA"]:
        return Reply(answer=[rr(q.qname, TYPE["A"], a("203.0.113.66"))], note="A for AAAA")
    return normal(q)


def forged(q):
    """(type, RDATA) of a record an upstream should not have sent: AAAA for AAAA, else A."""
    if q.qtype == TYPE["AAAA"]:
        return TYPE["AAAA"], aaaa("2001:db8::66")
    return TYPE["A"], a("203.0.113.66")


def wrong_owner(q):
    """An answer whose only record belongs to another name."""
    return Reply(answer=[rr(injected_owner(q), *forged(q))], note="other owner")


def extra_rr(q):
    """The right answer plus an A record for an unrelated name."""
    reply = normal(q, v4="192.0.2.8")
    reply.answer.append(rr(injected_owner(q), TYPE["A"], a("203.0.113.66")))
    reply.note = "extra RR"
    return reply


def wrong_class(q):
    """The right name and type, but class CH (3) instead of IN."""
    return Reply(answer=[rr(q.qname, *forged(q), cls=3)], note="class CH")


def case_flip(q):
    """A correct answer whose owner name is in upper case (names compare case-insensitively)."""
    reply = normal(q)
    if q.qtype in (TYPE["A"], TYPE["AAAA"]):
        rdata = a("192.0.2.1") if q.qtype == TYPE["A"] else aaaa("2001:db8::1")
        reply.answer = [rr(q.qname.upper(), q.qtype, rdata)]
    return reply


def undecodable(kind):
    """Right ID, flags and question; the answer section does not parse."""
    def play(q):
        if kind == "rdlen":  # RDLENGTH 200 with 4 bytes of RDATA
            answer = b"\xc0\x0c" + struct.pack("!HHIH", TYPE["A"], 1, TTL, 200) + a("192.0.2.9")
        elif kind == "pointer":  # the owner name is a pointer to itself
            offset = 12 + len(q.question)
            answer = struct.pack("!H", 0xC000 | offset) + struct.pack("!HHIH", TYPE["A"], 1, TTL, 4) \
                + a("192.0.2.9")
        else:  # "count": ANCOUNT 2, one record present
            answer = b"\xc0\x0c" + struct.pack("!HHIH", TYPE["A"], 1, TTL, 4) + a("192.0.2.9")
        flags = 0x8000 | (q.flags & 0x0100) | 0x0080
        count = 2 if kind == "count" else 1
        return struct.pack("!HHHHHH", q.id, flags, 1, count, 0, 0) + q.question + answer
    return play


# Record passthrough (RFC 3597): scenario -> (type, RDATA). The answer holds one record of that
# type when the question asks for it, NODATA otherwise.
RDATA = {
    "unknown-empty": (65280, b""),
    "unknown-bytes": (65280, b"\x00\xff\x01\x02\x00"),
    "null-empty": (TYPE["NULL"], b""),
    "apl-empty": (TYPE["APL"], b""),
    "txt-empty": (TYPE["TXT"], b"\x00"),
    # CAA (RFC 8659) a parser may "normalise": a tag in upper case and a value with a NUL,
    # 0xff and a quote; an unknown tag with the critical flag and an empty value.
    "caa-odd": (TYPE["CAA"], b"\x00\x05Issue" + b"ca.example; a=\"\x00\xff\""),
    "caa-critical": (TYPE["CAA"], b"\x80\x03tbs"),
    # HTTPS (RFC 9460) with an unknown SvcParamKey (key65000) next to alpn.
    "https-unknown-key": (TYPE["HTTPS"], struct.pack("!H", 1) + b"\x00"
                          + struct.pack("!HH", 1, 3) + b"\x02h2"
                          + struct.pack("!HH", 65000, 3) + b"x\x00y"),
}


def passthrough(scenario):
    rtype, rdata = RDATA[scenario]

    def play(q):
        if q.qtype == rtype:
            return Reply(answer=[rr(q.qname, rtype, rdata)])
        return Reply(authority=[soa_rr()])
    return play


DROP = "drop"

SCENARIOS = {
    "edns-formerr": (edns_refused("FORMERR"), "FORMERR without OPT to queries with OPT"),
    "edns-notimp": (edns_refused("NOTIMP"), "NOTIMP without OPT to queries with OPT"),
    "edns-drop": (lambda q: DROP if q.opt else normal(q), "no answer to queries with OPT"),
    "edns-strict": (edns_strict, "FORMERR (with OPT) to queries carrying an unknown EDNS option"),
    "flags-echo": (flags_echo, "TXT: the flags, EDNS size and options the query arrived with"),
    "cd-only": (cd_only, "SERVFAIL to CD=0, A 192.0.2.2 to CD=1"),
    "ad-set": (lambda q: normal(q, v4="192.0.2.3", ad=True), "normal answer with AD=1"),
    "cname-nodata": (cname_negative("NOERROR"), "CNAME (TTL 3600) to target.<name>, which has no AAAA; SOA MINIMUM 2"),
    "cname-nxdomain": (cname_negative("NXDOMAIN"), "CNAME (TTL 3600) to target.<name>, which does not exist; SOA MINIMUM 2"),
    "wrong-type": (wrong_type, "AAAA answered with an A record"),
    "wrong-owner": (wrong_owner, "answer holds only a record for www.<label>.bank.example."),
    "wrong-class": (wrong_class, "answer record of class CH (right name and type)"),
    "case-flip": (case_flip, "correct A/AAAA whose owner name is in upper case"),
    "extra-rr": (extra_rr, "right A plus A 203.0.113.66 for www.<label>.bank.example."),
    "bad-rdlen": (undecodable("rdlen"), "answer RR with RDLENGTH past the end of the message"),
    "bad-pointer": (undecodable("pointer"), "answer RR owner is a compression pointer to itself"),
    "bad-count": (undecodable("count"), "ANCOUNT 2 with one record present"),
}
for _name, (_type, _rdata) in RDATA.items():
    SCENARIOS[_name] = (passthrough(_name), "one TYPE%d record, RDATA %s" % (_type, _rdata.hex() or "empty"))


def respond(wire):
    """(bytes to send or None, log line) for one query."""
    try:
        q = Query(wire)
    except (ValueError, struct.error, IndexError) as err:
        return None, "undecodable query (%s) -> drop" % err
    if len(q.labels) >= 2 and q.labels[-1] == "example":
        play = SCENARIOS.get(q.labels[-2], (normal, ""))[0]
    else:
        play = public
    reply = play(q)
    if reply is DROP:
        return None, q.describe() + " -> drop"
    if isinstance(reply, bytes):
        return reply, q.describe() + " -> raw %d bytes" % len(reply)
    return reply.wire(q), q.describe() + " -> " + reply.describe()


# --- servers -----------------------------------------------------------------------------------

LOG_LOCK = threading.Lock()
LOG = sys.stderr


def log(proto, line):
    with LOG_LOCK:
        LOG.write("%s %s\n" % (proto, line))
        LOG.flush()


class UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        out, line = respond(data)
        log("udp", line)
        if out is not None:
            sock.sendto(out, self.client_address)


class TCPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(10)
        try:
            while True:
                head = self.request.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                data = self.request.recv(length, socket.MSG_WAITALL)
                out, line = respond(data)
                log("tcp", line)
                if out is None:
                    return  # a dropped query closes the connection
                self.request.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            return


class UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = True


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(listen, log_path):
    global LOG
    host, _, port = listen.rpartition(":")
    if log_path:
        LOG = open(log_path, "a", buffering=1)
    udp = UDPServer((host, int(port)), UDPHandler)
    tcp = TCPServer((host, int(port)), TCPHandler)
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log("---", "listening on %s (UDP and TCP)" % listen)
    stop.wait()
    udp.shutdown()
    tcp.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server")
    p_serve.add_argument("--listen", required=True, help="ADDRESS:PORT (UDP and TCP)")
    p_serve.add_argument("--log", help="query log file (default: stderr)")
    p_rdata = sub.add_parser("rdata", help="print TYPE HEX of a record-passthrough scenario")
    p_rdata.add_argument("scenario", choices=sorted(RDATA))
    sub.add_parser("list", help="list the scenarios")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.listen, args.log)
    elif args.command == "rdata":
        rtype, rdata = RDATA[args.scenario]
        print(rtype, rdata.hex().upper())
    else:
        for key in sorted(SCENARIOS):
            print("%-18s %s" % (key, SCENARIOS[key][1]))


if __name__ == "__main__":
    main()
