"""A slow, overloaded upstream for tests/bench/upstream-flap.sh: on 127.0.0.1:PORT (UDP), it
answers each query with one A record (192.0.2.1) after DELAY seconds and drops every fourth
query, so a forwarder sees timeouts and late answers interleaved, as under a flood.

Usage: python3 slow_upstream.py PORT [DELAY]
"""

import heapq
import socket
import struct
import sys
import threading
import time


def answer(query):
    """The reply to `query`: its ID and question, QR RD RA, one A record; None if malformed."""
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    if end + 5 > len(query):
        return None
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    return header + query[12 : end + 5] + record


def main():
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 1.2
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    due = []  # (when, sequence, reply, client)
    ready = threading.Condition()

    def sender():
        while True:
            with ready:
                while not due or due[0][0] > time.monotonic():
                    ready.wait(0.01)
                _, _, reply, client = heapq.heappop(due)
            try:
                sock.sendto(reply, client)
            except OSError:
                pass

    threading.Thread(target=sender, daemon=True).start()
    received = 0
    while True:
        query, client = sock.recvfrom(4096)
        received += 1
        reply = answer(query)
        if received % 4 == 0 or reply is None:
            continue
        with ready:
            heapq.heappush(due, (time.monotonic() + delay, received, reply, client))
            ready.notify()


if __name__ == "__main__":
    main()
