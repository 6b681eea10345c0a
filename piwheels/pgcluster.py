"""A private PostgreSQL cluster in a folder of its own.

Used by the demo command (the farm's embedded default) and by the test suite.
It runs the PostgreSQL server binaries from the system (Debian's
``postgresql-NN`` packages) or from the ``pgserver`` wheel, listening on a Unix
socket inside the data folder only, so it never collides with another server.

PostgreSQL refuses to run as root.  As root the server runs inside a user
namespace that maps root to an unprivileged id (``unshare --user``), so its
files stay root's outside and nothing on the machine is changed; where user
namespaces are unavailable it falls back to ``runuser -u postgres``.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from .errors import DatabaseError

log = logging.getLogger("pgcluster")

# The socket path must stay under the ~107 byte limit of sun_path.
_MAX_SOCKET_DIR = 90


def find_bindir() -> Path:
    """Find a folder holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[str] = []
    if os.environ.get("PIWHEELS_PG_BINDIR"):
        candidates.append(os.environ["PIWHEELS_PG_BINDIR"])
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for cand in candidates:
        if _has_server(Path(cand)):
            return Path(cand)
    try:
        # Imported only when needed: pgserver warns on import without XDG_RUNTIME_DIR.
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if _has_server(bundled):
            return bundled
    raise DatabaseError(
        "no PostgreSQL server binaries found; install Debian's postgresql package "
        "(apt-get install postgresql) or the pgserver wheel (pip install pgserver), "
        "or set PIWHEELS_PG_BINDIR"
    )


def _has_server(path: Path) -> bool:
    return all((path / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres"))


def _userns_works() -> bool:
    try:
        subprocess.run(
            ["unshare", "--user", "--map-user=65534", "--map-group=65534", "true"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class Cluster:
    """A PostgreSQL cluster living in *root* (data in ``root/data``).

    The superuser is ``postgres`` with trust authentication over the socket;
    the socket folder is private to the owner, so that is safe.
    """

    def __init__(self, root: Path, *, fsync: bool = True, bindir: Path | None = None) -> None:
        self.root = Path(root).absolute()
        self.datadir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.logfile = self.root / "server.log"
        self.fsync = fsync
        self._bindir = bindir
        self._wrapper: list[str] | None = None

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    def _wrap(self) -> list[str]:
        if self._wrapper is None:
            if os.geteuid() != 0:
                self._wrapper = []
            elif _userns_works():
                self._wrapper = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--"]
            elif shutil.which("runuser"):
                self._wrapper = ["runuser", "-u", "postgres", "--"]
                shutil.chown(self.root, "postgres", "postgres")
                for sub in (self.datadir, self.socket_dir):
                    if sub.exists():
                        shutil.chown(sub, "postgres", "postgres")
            else:
                raise DatabaseError(
                    "PostgreSQL cannot run as root and neither unshare --user nor runuser "
                    "is available; run as an ordinary user"
                )
        return self._wrapper

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [*self._wrap(), *args]
        try:
            return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise DatabaseError(
                f"{Path(args[0]).name} failed: {detail[-1] if detail else exc} (see {self.logfile})"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DatabaseError(f"{Path(args[0]).name} timed out after {timeout}s") from exc

    @property
    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster if it does not exist yet."""
        if len(str(self.socket_dir)) > _MAX_SOCKET_DIR:
            raise DatabaseError(f"cluster folder path too long for a socket: {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        self._wrap()
        if self.initialised:
            return
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    @property
    def running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @property
    def pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        """Start the server (initialising the cluster first if needed)."""
        self.init()
        if self.running:
            return
        opts = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.socket_dir}'",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
        ]
        if not self.fsync:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(opts),
            "start",
        )

    def stop(self) -> None:
        """Stop the server quickly (fast shutdown), if it runs."""
        pid = self.pid
        if pid is None or not self.running:
            return
        # Root (or the owner) can signal the postmaster directly, whatever
        # namespace it runs in.
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.running or not (self.datadir / "postmaster.pid").exists():
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGQUIT)

    def destroy(self) -> None:
        """Stop the server and delete every file of the cluster."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq URI for *dbname* as *user* over the cluster's socket."""
        return f"postgresql://{quote(user)}@/{quote(dbname)}?host={quote(str(self.socket_dir))}"

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """The same as :meth:`dsn` in SQLAlchemy's form."""
        return "postgresql+psycopg2" + self.dsn(dbname, user)[len("postgresql") :]
