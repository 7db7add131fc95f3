#!/usr/bin/env python3
"""Hostile DNS-over-TCP clients for tests/bench/dns-tcp.sh (issue 15, kind 1).

  tcp_clients.py idle HOST PORT COUNT HOLD [SOURCES]
      opens COUNT TCP connections that never send anything, from SOURCES loopback addresses
      in turn (127.0.0.1, 127.0.0.2, ...; default 1), holds them HOLD seconds (the
      connections the server closes meanwhile are counted), then closes them all.
  tcp_clients.py pipeline HOST PORT COUNT SECONDS
      opens COUNT connections that send `localhost. A` queries as fast as the server takes
      them, for SECONDS, and never read an answer; then closes them.

Prints one line of key=value figures. Only the standard library; loopback only by intent.
"""

import errno
import os
import selectors
import socket
import struct
import sys
import time


def query(qid):
    # ID, RD, one question: localhost. A IN (answered by both resolvers without an upstream).
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return header + b"\x09localhost\x00" + struct.pack(">HH", 1, 1)


def connect_all(host, port, count, sources=1):
    conns, failed = [], 0
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sources > 1:
            sock.bind((f"127.0.{(i % sources) // 250}.{(i % sources) % 250 + 1}", 0))
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                sock.close()
                break
            failed += 1
            sock.close()
            continue
        conns.append(sock)
    return conns, failed


def closed_by_server(sock):
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def idle(host, port, count, hold, sources=1):
    conns, failed = connect_all(host, port, count, sources)
    time.sleep(hold)
    closed = sum(1 for s in conns if closed_by_server(s))
    for sock in conns:
        sock.close()
    print(f"opened={len(conns)} failed={failed} closed_by_server={closed}")


def pipeline(host, port, count, seconds):
    conns, _ = connect_all(host, port, count)
    sel = selectors.DefaultSelector()
    for sock in conns:
        sel.register(sock, selectors.EVENT_WRITE)
    wire = b""
    for qid in range(256):
        msg = query(qid)
        wire += struct.pack(">H", len(msg)) + msg
    sent = {s.fileno(): 0 for s in conns}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            try:
                sent[sock.fileno()] += sock.send(wire)
            except BlockingIOError:
                pass
            except OSError:
                sel.unregister(sock)
    total = sum(sent.values())
    queries = total // (len(wire) // 256)
    print(f"connections={len(conns)} bytes_sent={total} queries_sent~={queries}")
    for sock in conns:
        sock.close()


def main():
    mode, host, port, count, secs = sys.argv[1:6]
    extra = [int(arg) for arg in sys.argv[6:]]
    {"idle": idle, "pipeline": pipeline}[mode](host, int(port), int(count), float(secs), *extra)


if __name__ == "__main__":
    main()
