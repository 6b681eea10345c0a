"""Messages per second through the transport (encode, validate, send, receive,
decode, validate) beside raw pyzmq round trips of the same bytes.

A builder sends BUSY (with its resource figures) and the master answers CONT:
the message builders send most. Both sides run in separate processes over
tcp on loopback, as in a farm. Usage::

    python bench/bench_transport.py [--scale 1.0] [--window 1,100]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from piwheels import protocols
from piwheels.transport import DEALER, ROUTER, Context, encode, now

STATS = {
    "timestamp": now(),
    "disk_total": 32_000_000_000,
    "disk_free": 12_000_000_000,
    "mem_total": 4_000_000_000,
    "mem_free": 1_500_000_000,
    "swap_total": 1_000_000_000,
    "swap_free": 900_000_000,
    "load_average": 1.25,
    "cpu_temp": 54.2,
}
BUSY = {"build_id": 123456, "stats": STATS}


def _raw_server(address: str, count: int, ready: mp.Event) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    ready.set()
    reply = encode("CONT", None)
    for _ in range(count):
        ident, _payload = sock.recv_multipart()
        sock.send_multipart([ident, reply])
    sock.close(linger=1000)
    ctx.term()


def _piw_server(address: str, count: int, ready: mp.Event) -> None:
    ctx = Context()
    sock = ctx.socket(ROUTER, protocols.builder)
    sock.bind(address)
    ready.set()
    for _ in range(count):
        got = sock.recv_msg()
        sock.send_msg("CONT", None, peer=got.peer)
    sock.close(linger=1)
    ctx.zmq.term()


def _run(server: object, client: str, address: str, count: int, window: int) -> float:
    ready = mp.Event()
    proc = mp.Process(target=server, args=(address, count, ready))
    proc.start()
    ready.wait(10)
    if client == "raw":
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(address)
        payload = encode("BUSY", BUSY)
        start = time.perf_counter()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                sock.send(payload)
                sent += 1
            sock.recv()
            received += 1
        elapsed = time.perf_counter() - start
        sock.close(linger=0)
        ctx.term()
    else:
        pctx = Context()
        psock = pctx.socket(DEALER, reversed(protocols.builder))
        psock.connect(address)
        start = time.perf_counter()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                psock.send_msg("BUSY", BUSY)
                sent += 1
            psock.recv_msg()
            received += 1
        elapsed = time.perf_counter() - start
        psock.close(linger=0)
        pctx.zmq.term()
    proc.join()
    return count / elapsed


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 50,000 round trips")
    parser.add_argument("--window", default="1,100", help="messages in flight, comma-separated")
    ns = parser.parse_args()
    count = max(1000, int(50_000 * ns.scale))
    print(f"{count:,} BUSY/CONT round trips over tcp://127.0.0.1, two processes")
    print(f"{'window':>6}  {'raw pyzmq/s':>12}  {'transport/s':>12}  {'ratio':>6}")
    for window in (int(w) for w in ns.window.split(",")):
        raw = _run(_raw_server, "raw", f"tcp://127.0.0.1:{_free_port()}", count, window)
        piw = _run(_piw_server, "piw", f"tcp://127.0.0.1:{_free_port()}", count, window)
        print(f"{window:>6}  {raw:>12,.0f}  {piw:>12,.0f}  {piw / raw:>6.0%}")
    print("aim: transport at least 50% of raw")


if __name__ == "__main__":
    main()
