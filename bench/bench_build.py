"""Overhead of build_wheel over plain ``pip wheel`` for a small pure-Python sdist.

Serves a loopback PEP 503 index (the sdist plus setuptools/wheel/packaging
repacked from this Python, so nothing leaves the machine), then builds the
same sdist N times each way:

* raw: ``python -m pip wheel PKG==1.0 --no-deps --no-binary PKG --no-cache-dir
  --index-url URL -w OUT`` with a minimal environment (the machine's limit
  for this work);
* farm: :func:`piwheels.builder.build_wheel` (clean env, timeout, memory
  limit, disk check, bubblewrap if present, ``-v`` log, straggler scan),
  followed by :func:`analyse_wheel`.

Prints the median of each, the difference per build and the ratio.
Run small: ``python bench/bench_build.py --scale 0.2`` (1 build each).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piwheels.builder import analyse_wheel, build_wheel, sandbox_status
from piwheels.builder.sandbox import kill_marked, python_roots, resolve_sandbox, run_limited
from tests.sdists import build_requirement_wheels, pure_sdist, write_simple_index


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 5 builds each way")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args()
    runs = max(1, round(5 * args.scale))

    root = Path(tempfile.mkdtemp(prefix="piw-bench-build-"))
    build_requirement_wheels(root / "files")
    pure_sdist(root / "files", "piwbench-pure")
    write_simple_index(root)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    print(sandbox_status(args.sandbox))

    # Alternate the two so that load from other processes hits both alike.
    raw: list[float] = []
    farm: list[float] = []
    analyse_s = 0.0
    for i in range(runs):
        out = root / f"raw{i}"
        home = root / f"home{i}"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "PIP_CONFIG_FILE": os.devnull,
        }
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "piwbench-pure==1.0", "--no-deps",
             "--no-binary", "piwbench-pure", "--no-cache-dir", "--index-url", url,
             "-w", str(out), "-q", "--disable-pip-version-check"],
            env=env, check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        raw.append(time.perf_counter() - start)

        start = time.perf_counter()
        result = build_wheel(
            "piwbench-pure",
            "1.0",
            index_url=url,
            work_dir=root / "work",
            timeout=600,
            memory_limit=4 << 30,
            min_free_disk=1 << 20,
            sandbox=args.sandbox,
        )
        if not result.ok:
            sys.exit(f"build failed:\n{result.log[-3000:]}")
        t0 = time.perf_counter()
        analyse_wheel(result.wheels[0])
        analyse_s = time.perf_counter() - t0
        farm.append(time.perf_counter() - start)
        result.cleanup()
    server.shutdown()

    raw_s, farm_s = statistics.median(raw), statistics.median(farm)
    print(f"builds each way:          {runs}")
    print(f"raw pip wheel (limit):    {raw_s:.2f} s per build (median)")
    print(f"build_wheel + analyse:    {farm_s:.2f} s per build (median)")
    print(f"overhead:                 {farm_s - raw_s:+.2f} s per build (aim < 1 s)")
    print(f"ratio farm / raw:         {farm_s / raw_s:.2f}")
    # The fixed costs the farm adds, measured alone (wall clock of the pip
    # runs above swings by seconds when the machine is shared).
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "log"), "wb") as log:
        plain, boxed = [], []
        for _ in range(max(3, runs)):
            for bwrap, into in ((None, plain), (resolve_sandbox(args.sandbox), boxed)):
                start = time.perf_counter()
                run_limited([sys.executable, "-c", "pass"], env={"PATH": os.defpath}, cwd=tmp,
                            output=log, timeout=60, bwrap=bwrap,
                            ro_binds=python_roots(sys.executable), rw_binds=[tmp])  # fmt: skip
                into.append(time.perf_counter() - start)
    start = time.perf_counter()
    kill_marked("bench")
    scan = time.perf_counter() - start
    print(f"sandbox start-up:         {statistics.median(boxed) - statistics.median(plain):+.3f} s")
    print(f"straggler scan of /proc:  {scan:.3f} s")
    print(f"analyse_wheel:            {analyse_s:.3f} s")
    print(f"load average now:         {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
