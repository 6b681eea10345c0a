"""File transfer throughput: FileSender -> FileReceiver over tcp loopback, beside raw TCP.

The sender runs in its own process (as a builder would); the receiver is the
master's FileReceiver task in its thread, driven by EXPECT / VERIFY / PUBLISH
on its transfers socket.  The file is a real wheel (a stored zip holding
random bytes, correct RECORD) so verification and publication are measured
too.  The physical limit is the same bytes sent over a plain TCP socket on
loopback, from the file on one side into a file on the other.  Usage::

    python bench/bench_filetransfer.py [--scale 1.0] [--chunk 1M] [--window N] [--curve]
        [--dir FOLDER]

Scale 1.0 is a 200 MB file.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import multiprocessing as mp
import os
import resource
import socket
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piwheels import protocols
from piwheels.filetransfer import FileSender, new_token, sha256_of
from piwheels.master.env import MasterEnv
from piwheels.master.file_receiver import FileReceiver, default_window
from piwheels.settings import CONVERTERS, Settings
from piwheels.transport import DEALER, Context, generate_keys, load_keys

BLOCK = 1 << 20


def make_wheel(folder: Path, size: int) -> Path:
    """A valid wheel of about *size* bytes (random, stored: incompressible)."""
    dist_info = "benchpkg-1.0.dist-info"
    payload = os.urandom(size)
    members = {
        "benchpkg/__init__.py": b"",
        "benchpkg/blob.bin": payload,
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: benchpkg\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    rows = []
    for name, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
    rows.append(f"{dist_info}/RECORD,,")
    path = folder / "benchpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(rows) + "\n")
    return path


def _sender(address: str, path: str, token: str, curve: list[Any] | None, out: Any) -> None:
    ctx = Context()
    kwargs: dict[str, Any] = {}
    if curve is not None:
        kwargs = {"keys": load_keys(Path(curve[0])), "server_public": curve[1]}
    sender = FileSender(ctx, address, path, token, **kwargs)
    # Timed here, so process start-up and imports are not counted.
    start = time.perf_counter()
    cpu = _cpu()
    threads = _threads_cpu()
    result = sender.run()
    elapsed = time.perf_counter() - start
    cpu = _cpu() - cpu
    after = _threads_cpu()
    per_thread = {n: after[n] - threads.get(n, 0.0) for n in after}
    ctx.close()
    out.put((result.ok, result.reason, elapsed, cpu, per_thread))


def _cpu() -> float:
    """CPU seconds of this process, every thread (ZeroMQ's I/O threads too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, summed by thread name (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def bench_piwheels(
    work: Path, wheel: Path, chunk: int, window: int | None, curve: bool
) -> dict[str, Any]:
    keys = None
    ctx_kwargs: dict[str, Any] = {}
    client: list[Any] | None = None
    if curve:
        generate_keys(work / "server", "master")
        generate_keys(work / "clients", "sender")
        keys = load_keys(work / "server" / "master.key_secret")
        ctx_kwargs["authorized_keys"] = work / "clients"
        client = [str(work / "clients" / "sender.key_secret"), keys.public]
    ctx = Context(**ctx_kwargs)
    settings = Settings().replace("master", file_chunk_size=chunk, max_file_size=1 << 40)
    env = MasterEnv(
        settings=settings,
        addresses={"file": "tcp://127.0.0.1:0", "transfers": f"inproc://t-{new_token()}"},
        output_path=work / "www",
        server_keys=keys,
    )
    receiver = FileReceiver(ctx, env, window=window)
    client_sock = ctx.socket(DEALER, reversed(protocols.transfers))
    client_sock.connect(receiver.transfers_address)
    receiver.start()
    size, digest = sha256_of(wheel)
    token = new_token()
    try:
        client_sock.send_msg(
            "EXPECT",
            {
                "transfer": token,
                "filename": wheel.name,
                "package": "benchpkg",
                "version": "1.0",
                "abi": None,
                "platform": None,
                "size": size,
                "sha256": digest,
            },
        )
        assert client_sock.recv_msg(timeout=60).msg == "EXPECTING"
        spawn = mp.get_context("spawn")
        out = spawn.Queue()
        proc = spawn.Process(
            target=_sender, args=(receiver.file_address, str(wheel), token, client, out)
        )
        cpu = _cpu()
        threads = _threads_cpu()
        proc.start()
        ok, reason, transfer, sender_cpu, sender_threads = out.get(timeout=3600)
        # Includes this process's waiting on the queue, which costs no CPU.
        receiver_cpu = _cpu() - cpu
        after = _threads_cpu()
        # Threads that ended during the transfer (the hash thread) are what is left over.
        per_thread = {n: after[n] - threads.get(n, 0.0) for n in after}
        per_thread["(ended threads)"] = receiver_cpu - sum(per_thread.values())
        proc.join()
        if not ok:
            raise SystemExit(f"transfer failed: {reason}")
        start = time.perf_counter()
        cpu = _cpu()
        client_sock.send_msg("PUBLISH", {"transfer": token})
        reply = client_sock.recv_msg(timeout=3600)
        publish = time.perf_counter() - start
        # The receiver's thread (and its fsync threads) did the work; this one waited.
        publish_cpu = _cpu() - cpu
        if reply.msg != "PUBLISHED":
            raise SystemExit(f"publish refused: {reply.data}")
    finally:
        client_sock.close(linger=0)
        receiver.quit()
        receiver.join(30)
        ctx.close()
    return {
        "transfer": transfer,
        "publish": publish,
        "publish_cpu": publish_cpu,
        "sender_cpu": sender_cpu,
        "receiver_cpu": receiver_cpu,
        "receiver_threads": per_thread,
        "sender_threads": sender_threads,
    }


def _raw_receiver(port_out: Any, dest: str) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port_out.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(dest, "wb") as fh:
        while n := conn.recv_into(buf):
            fh.write(view[:n])
    conn.close()
    srv.close()
    port_out.put("done")


def bench_raw(src: Path, dest: Path) -> float:
    spawn = mp.get_context("spawn")
    q = spawn.Queue()
    proc = spawn.Process(target=_raw_receiver, args=(q, str(dest)))
    proc.start()
    port = q.get(timeout=60)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn, open(src, "rb") as fh:
        while data := fh.read(BLOCK):
            conn.sendall(data)
    assert q.get(timeout=3600) == "done"
    elapsed = time.perf_counter() - start
    proc.join()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = a 200 MB file")
    default_chunk = Settings().master.file_chunk_size // 1024
    parser.add_argument(
        "--chunk",
        default=f"{default_chunk}K",
        help=f"chunk size (max 1M) [the farm's default, {default_chunk}K]",
    )
    parser.add_argument(
        "--window", type=int, default=None, help="FETCHes in flight [the file receiver's default]"
    )
    parser.add_argument("--curve", action="store_true", help="encrypt with CurveZMQ")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder for the files (a temporary folder inside it) [the system's temp folder]",
    )
    args = parser.parse_args()
    size = int(200_000_000 * args.scale)
    chunk = CONVERTERS["size"].parse(args.chunk)
    if args.window is None:
        args.window = default_window(chunk)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="piw-bench-ft-", dir=args.dir) as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        wheel = make_wheel(src, size)
        mb = wheel.stat().st_size / 1e6
        raw = bench_raw(wheel, work / "raw.out")
        piw = bench_piwheels(work, wheel, chunk, args.window, args.curve)
        raw_rate = mb / raw
        rate = mb / piw["transfer"]
        both = mb / (piw["transfer"] + piw["publish"])
        print(f"file: {mb:.1f} MB, chunk {chunk} bytes, window {args.window}"
              f"{', CurveZMQ' if args.curve else ''}")  # fmt: skip
        print(f"raw loopback TCP (file -> socket -> file): {raw_rate:8.1f} MB/s")
        print(f"FileSender -> FileReceiver transfer:       {rate:8.1f} MB/s"
              f"  ratio {rate / raw_rate:.0%} (aim 70%)")  # fmt: skip
        print(f"CPU per MB (less sensitive to a busy machine): sender "
              f"{piw['sender_cpu'] / mb * 1000:.2f} ms, receiver "
              f"{piw['receiver_cpu'] / mb * 1000:.2f} ms")  # fmt: skip
        for side in ("sender", "receiver"):
            shown = sorted(piw[f"{side}_threads"].items(), key=lambda kv: -kv[1])
            print(f"  {side} threads, ms per MB: " + ", ".join(
                f"{name} {cpu / mb * 1000:.2f}" for name, cpu in shown if cpu / mb >= 0.00001
            ))  # fmt: skip
        print(f"transfer + verify + publish:               {both:8.1f} MB/s"
              f"  ({piw['publish']:.2f} s to verify and publish)")  # fmt: skip
        print(f"verify + publish: {piw['publish']:.3f} s wall, {piw['publish_cpu']:.3f} s CPU "
              f"({piw['publish_cpu'] / mb * 1000:.2f} ms per MB)")  # fmt: skip


if __name__ == "__main__":
    main()
