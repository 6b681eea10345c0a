"""Overhead of the builder's whole build path over plain ``pip wheel`` for a small sdist.

Serves a loopback PEP 503 index (the sdist plus setuptools/wheel/packaging
repacked from this Python, so nothing leaves the machine), then builds the
same sdist N times each way, alternating so load from other processes hits
both alike:

* raw: ``python -m pip wheel PKG==1.0 --no-deps --no-binary PKG --no-cache-dir
  --index-url URL -w OUT`` with a minimal environment (the machine's limit
  for this work);
* farm: the builder daemon's build path without the network, a
  :class:`piwheels.builder.daemon.BuildJob` (``build_wheel`` with clean env,
  timeout, memory limit, disk check, bubblewrap if present and ``-v`` log;
  wheel check, ELF scan and ``dpkg -S``; import test in a fresh venv; the
  build held on disk for the master).

Prints, as medians over the runs, wall and CPU seconds (this process and its
children) of each way, the overhead per build, and the farm's time per step
(from :mod:`piwheels.builder.timing`).  CPU time is the steadier figure on a
shared, loaded machine.  Also the sandbox start-up alone.

Run small: ``python bench/bench_build.py --scale 0.2`` (1 build each);
``--kind cext`` builds a C extension instead (the ELF scan has work), ``--kind
zlib`` one that links libz (``dpkg -S`` too).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from piwheels.builder import sandbox_status
from piwheels.builder.daemon import BuildJob
from piwheels.builder.sandbox import python_roots, resolve_sandbox, run_limited
from piwheels.settings import BuilderSettings, Settings
from tests.sdists import (
    build_requirement_wheels,
    c_ext_sdist,
    pure_sdist,
    write_simple_index,
    zlib_sdist,
)

# pure: no ELF; cext: an extension that links nothing (ELF scan, no dpkg -S);
# zlib: links libz (dpkg -S on the first build, kept answers after).
_KINDS = {"pure": pure_sdist, "cext": c_ext_sdist, "zlib": zlib_sdist}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _all_cpu() -> float:
    """CPU seconds of this process (all threads) and its reaped children."""
    return _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 5 builds each way")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--kind", default="pure", choices=list(_KINDS))
    parser.add_argument("--no-import-test", action="store_true", help="skip the import test")
    args = parser.parse_args()
    runs = max(1, round(5 * args.scale))

    root = Path(tempfile.mkdtemp(prefix="piw-bench-build-"))
    build_requirement_wheels(root / "files")
    package = f"piwbench-{args.kind}"
    _KINDS[args.kind](root / "files", package)
    write_simple_index(root)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    print(sandbox_status(args.sandbox))
    settings = Settings(
        builder=BuilderSettings(
            build_dir=root / "work",
            python=Path(sys.executable),
            sandbox=args.sandbox,
            min_free_disk=1 << 20,
            import_test=not args.no_import_test,
        )
    )
    (root / "work").mkdir()

    raw_wall: list[float] = []
    raw_cpu: list[float] = []
    farm_wall: list[float] = []
    farm_cpu: list[float] = []
    steps: dict[str, list[tuple[float, float]]] = {}
    for i in range(runs):
        out = root / f"raw{i}"
        home = root / f"home{i}"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "PIP_CONFIG_FILE": os.devnull,
        }
        cpu0, start = _all_cpu(), time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", f"{package}==1.0", "--no-deps",
             "--no-binary", package, "--no-cache-dir", "--index-url", url,
             "-w", str(out), "-q", "--disable-pip-version-check"],
            env=env, check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        raw_wall.append(time.perf_counter() - start)
        raw_cpu.append(_all_cpu() - cpu0)

        job = BuildJob(
            build_id=i + 1,
            package=package,
            version="1.0",
            timeout=600,
            settings=settings,
            index_url=url,
            extra_index_urls=[],
            environment={},
            held_folder=root / "work" / "held",
        )
        cpu0, start = _all_cpu(), time.perf_counter()
        job.start()
        job.done.wait()
        farm_wall.append(time.perf_counter() - start)
        farm_cpu.append(_all_cpu() - cpu0)
        assert job.held is not None
        built = job.held.built
        if not built["status"]:
            sys.exit(f"build failed ({built['failure_class']}):\n{built['log'][-3000:]}")
        if not args.no_import_test and not all(f["import_ok"] for f in built["files"]):
            sys.exit(f"import test failed: {built['files']}")
        for name, s in job.timings.totals().items():
            steps.setdefault(name, []).append((s.wall, s.cpu))
        job.held.discard()
    server.shutdown()

    med = statistics.median
    print(f"package: {package}; builds each way: {runs}; import test: {not args.no_import_test}")
    print(f"{'':28}{'wall s':>9}{'cpu s':>9}")
    print(f"{'raw pip wheel (limit)':28}{med(raw_wall):9.3f}{med(raw_cpu):9.3f}")
    print(f"{'farm build path':28}{med(farm_wall):9.3f}{med(farm_cpu):9.3f}")
    over_wall = med(farm_wall) - med(raw_wall)
    over_cpu = med(farm_cpu) - med(raw_cpu)
    print(f"{'overhead per build':28}{over_wall:+9.3f}{over_cpu:+9.3f}   (aim < 1 s)")
    print(f"{'ratio farm / raw':28}{med(farm_wall) / med(raw_wall):9.2f}"
          f"{med(farm_cpu) / med(raw_cpu):9.2f}")  # fmt: skip
    print(f"farm steps (median; max wall; runs that had the step):{'':3}")
    other_wall = other_cpu = 0.0
    for name, values in steps.items():
        walls = [w for w, _ in values] + [0.0] * (runs - len(values))
        cpus = [c for _, c in values] + [0.0] * (runs - len(values))
        print(f"  {name:26}{med(walls):9.3f}{med(cpus):9.3f}{max(walls):9.3f}  (in {len(values)})")
        if name != "pip wheel":
            other_wall += med(walls)
            other_cpu += med(cpus)
    print(f"  {'all but pip wheel':26}{other_wall:9.3f}{other_cpu:9.3f}")
    if resolve_sandbox(args.sandbox):
        print("  (cpu leaves out processes inside bubblewrap: getrusage does not see through its")
        print("   PID namespace; --sandbox off gives their CPU)")

    # The sandbox's own start-up, measured alone (an empty Python run with and without it).
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "log"), "wb") as log:
        plain, boxed = [], []
        for _ in range(max(3, runs)):
            for bwrap, into in ((None, plain), (resolve_sandbox(args.sandbox), boxed)):
                start = time.perf_counter()
                run_limited([sys.executable, "-c", "pass"], env={"PATH": os.defpath}, cwd=tmp,
                            output=log, timeout=60, bwrap=bwrap,
                            ro_binds=python_roots(sys.executable), rw_binds=[tmp])  # fmt: skip
                into.append(time.perf_counter() - start)
    print(f"sandbox start-up alone:     {med(boxed) - med(plain):+.3f} s wall")
    print(f"load average now:           {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
