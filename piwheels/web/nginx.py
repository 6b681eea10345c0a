"""The nginx configuration that serves the output folder, and a private nginx for tests and demos.

:func:`render_site` gives the ``http``-level part (maps, log format, the ``server`` block): the
Debian site file (``/etc/nginx/sites-available/piwheels``) is exactly that.
:func:`render_config` wraps it into a complete ``nginx.conf`` for a private instance, which
:class:`PrivateNginx` runs.

PEP 691 negotiation is done with ``map`` blocks, as far as nginx allows without scripting:

* the q-value of the JSON type (``v1+json`` or ``latest+json``) and of the HTML types
  (``v1+html``, ``latest+html``, ``text/html``, else ``text/*`` or ``*/*``, first found) are
  picked out of ``Accept`` and normalised to four digits (``1`` -> ``1000``, ``0.01`` -> ``0010``);
* a regex with a back-reference compares those digit strings: JSON is served when its q is at
  least html's, HTML otherwise, 406 when neither is acceptable;
* ``?format=<content type>`` overrides ``Accept``; an unknown format gets 406;
* an empty or absent ``Accept`` gets HTML.

Where a type appears twice in ``Accept``, the first one counts.

Names that are not canonical (``simple/Foo_Bar/``, ``project/foo.bar/``) are redirected (301)
to the canonical page by nginx itself, with no list of known names and so no reload when
projects appear: a chain of ``map`` blocks (:data:`NAME_STEPS` deep) computes the PEP 503
name, each step folding one upper-case letter or one run of ``-_.`` into ``-`` (plain nginx
has no lower-case function; Debian's nginx-core has no perl or njs module).  nginx refuses to
nest more than 100 variable evaluations, so the redirect location evaluates the chain at
checkpoints every :data:`_CHECKPOINT` steps (each step's value is cached per request).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from piwheels.errors import ConfigError

#: The access log format piw-logger reads (one JSON object per line).
LOG_FORMAT = (
    "log_format piwheels escape=json '{"
    '"time":"$time_iso8601","addr":"$remote_addr","method":"$request_method",'
    '"uri":"$request_uri","proto":"$server_protocol","status":$status,"bytes":$bytes_sent,'
    '"body_bytes":$body_bytes_sent,"referer":"$http_referer","ua":"$http_user_agent",'
    '"accept":"$http_accept","rt":$request_time,"host":"$host"'
    "}';"
)

_JSON_T = r"application/vnd\.pypi\.simple\.(?:v1|latest)\+json"
_HTML_V = r"application/vnd\.pypi\.simple\.(?:v1|latest)\+html"
# "q=" inside the same media range: anything but a comma between the type and the q.
_Q = r"[^,]*?;\s*q=(?<q>[0-9.]+)"


def _q_map(var: str, types: list[str]) -> str:
    lines = [f"map $http_accept {var}_raw {{", '    default "";']
    for t in types:
        lines.append(f'    "~*(?:^|,)\\s*{t}{_Q}" $q;')
        lines.append(f'    "~*(?:^|,)\\s*{t}\\s*(?:;[^,]*)?(?:,|$)" 1;')
    lines.append("}")
    # Normalise the q-value to four digits so a regex can compare two of them.
    lines += [
        f"map {var}_raw {var} {{",
        '    default "";',
        '    "" "";',
        '    "~^1(?:\\.0*)?$" 1000;',
        '    "~^0*(?:\\.0*)?$" 0000;',
        '    "~^0?\\.(?<a>\\d)$" 0${a}00;',
        '    "~^0?\\.(?<a>\\d)(?<b>\\d)$" 0${a}${b}0;',
        '    "~^0?\\.(?<a>\\d)(?<b>\\d)(?<c>\\d)\\d*$" 0${a}${b}${c};',
        "}",
    ]
    return "\n".join(lines)


def _compare_regex() -> str:
    # "JJJJ:HHHH" where JSON's q > html's: equal prefix, then a bigger digit.
    alts = "|".join(f"{d}\\d*:\\1[0-{d - 1}]" for d in range(9, 0, -1))
    return f"~^(\\d*)(?:{alts})\\d*$"


NEGOTIATION = "\n".join(
    [
        _q_map("$piw_q_json", [_JSON_T]),
        _q_map("$piw_q_html", [_HTML_V, r"text/html", r"text/\*", r"\*/\*"]),
        'map "$piw_q_json:$piw_q_html" $piw_negotiated {',
        "    default 406;",
        '    "~^0000:0000$" 406;',  # both explicitly refused
        '    "~^0000:\\d+$" html;',
        '    "~^:(?:0000)?$" 406;',
        '    "~^:\\d+$" html;',
        '    "~^0000:$" 406;',
        '    "~^\\d+:$" json;',
        '    "~^(\\d+):\\1$" json;',  # a tie: JSON is the better format
        f'    "{_compare_regex()}" json;',
        '    "~^\\d+:\\d+$" html;',
        "}",
        "map $http_accept $piw_accept_given {",
        '    default 1;    "" 0;',
        "}",
        'map "$piw_accept_given:$piw_negotiated" $piw_from_accept {',
        "    default $piw_negotiated;",
        '    "~^0:" html;',
        "}",
        "map $arg_format $piw_format {",
        "    default 406;",
        '    "" $piw_from_accept;',
        '    "~*^application(?:/|%2F)vnd\\.pypi\\.simple\\.(?:v1|latest)(?:\\+|%2B)json$" json;',
        '    "~*^application(?:/|%2F)vnd\\.pypi\\.simple\\.(?:v1|latest)(?:\\+|%2B)html$" html;',
        '    "~*^text(?:/|%2F)html$" html;',
        "}",
        "map $piw_format $piw_index {",
        "    json index.json;",
        "    html index.html;",
        "    default 406;",
        "}",
    ]
)


#: Steps of the name normaliser: one per upper-case letter or separator run to fix.  A name
#: has at most one per character and names are at most 200 characters long, so every name
#: gets its canonical form; the chain costs one short regex per step once the name is done.
NAME_STEPS = 200
_CHECKPOINT = 50  # evaluate the chain every 50 steps: nginx stops nesting at 100
_CANONICAL = "^[a-z0-9]+(?:-[a-z0-9]+)*$"


def _name_normaliser(steps: int = NAME_STEPS) -> str:
    """``map`` blocks taking ``$piw_name`` to ``$piw_canonical`` (empty if it has none)."""
    lines = []
    for k in range(1, steps + 1):
        src = "$piw_name" if k == 1 else f"$piw_n{k - 1}"
        lines += [
            f"map {src} $piw_n{k} {{",
            f'    "~{_CANONICAL}" {src};',
            # The first run of separators that is not a single "-" becomes "-".
            '    "~^(.*?)(?:[-_.]*[_.][-_.]*|--+)(.*)$" "$1-$2";',
        ]
        # Otherwise the first upper-case letter is folded.
        lines += [f'    "~^([^A-Z]*){c}(.*)$" "$1{c.lower()}$2";' for c in _UPPER]
        lines += [f"    default {src};", "}"]
    lines += [
        f"map $piw_n{steps} $piw_canonical {{",
        f'    "~{_CANONICAL}" $piw_n{steps};',
        '    default "";',
        "}",
        "map $piw_rest $piw_rest_or_slash {",
        '    "" /;',
        "    default $piw_rest;",
        "}",
    ]
    return "\n".join(lines)


def _checkpoints(steps: int = NAME_STEPS) -> str:
    return "\n".join(
        f"        set $piw_c{k} $piw_n{k};" for k in range(_CHECKPOINT, steps, _CHECKPOINT)
    )


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: A request for a project page under a name that is not canonical: anything but lower-case
#: letters, digits and single inner "-".  The root index files are not names; the rest of the
#: path is kept only when it holds characters safe in a Location header.
_ALIAS_LOCATION = (
    "^/(?<piw_top>simple|project)/"
    "(?<piw_name>(?!index\\.(?:html|json)(?:\\.gz)?(?:/|$))"
    "(?:[^/]*(?:[^a-z0-9/-]|--)[^/]*|-[^/]*|[^/]*-))"
    "(?<piw_rest>/[A-Za-z0-9._+!~/-]*)?$"
)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join((prefix + line) if line else line for line in text.splitlines())


def render_site(
    output_path: str | os.PathLike[str],
    *,
    listen: str | list[str] = "80",
    access_log: str | os.PathLike[str] = "/var/log/nginx/piwheels-access.log",
    server_name: str = "_",
) -> str:
    """The ``http``-level configuration: negotiation maps, log format and the server block.

    *listen* is one or more nginx ``listen`` arguments (``"127.0.0.1:8080"``,
    ``"unix:/run/idx.sock"``).  Paths must be absolute.
    """
    root = Path(output_path)
    if not root.is_absolute() or not Path(access_log).is_absolute():
        raise ConfigError("nginx: the output path and the access log must be absolute paths")
    for value in (str(root), str(access_log), server_name):
        if any(c in value for c in ";{}'\"\n\\ ") or not value:
            raise ConfigError(f"nginx: unusable characters in {value!r:.80}")
    listens = [listen] if isinstance(listen, str) else list(listen)
    listen_lines = "\n".join(f"    listen {entry};" for entry in listens)
    long_cache = '"public, max-age=365000000, immutable"'
    return f"""# piwheels: serves the static site in {root}
# Generated by piwheels.web.nginx; regenerate rather than edit.
{LOG_FORMAT}
{NEGOTIATION}
# The PEP 503 name of a spelling that is not canonical (one step per fix; see the module).
variables_hash_max_size 4096;
{_name_normaliser()}

server {{
{listen_lines}
    server_name {server_name};
    root {root};
    access_log {access_log} piwheels;
    autoindex off;
    server_tokens off;
    absolute_redirect off;
    charset utf-8;
    # text/html is always in charset_types; naming it again makes nginx warn.
    charset_types text/plain text/css text/xml application/javascript;
    index index.html;
    error_page 404 /404.html;
    etag on;

    gzip on;
    gzip_static on;
    gzip_vary on;
    gzip_proxied any;
    gzip_min_length 1024;
    gzip_types text/css text/plain text/xml application/xml application/javascript
               application/json application/vnd.pypi.simple.v1+json image/svg+xml;

    types {{
        text/html html;
        text/css css;
        text/plain txt;
        text/xml xml;
        application/javascript js;
        application/json json;
        image/svg+xml svg;
        image/png png;
        application/octet-stream whl metadata;
    }}
    default_type application/octet-stream;

    # Other spellings of a name redirect to the canonical page (PEP 503), query kept.
    location ~ "{_ALIAS_LOCATION}" {{
{_checkpoints()}
        if ($piw_canonical = "") {{
            return 404;
        }}
        add_header Cache-Control "public, max-age=86400" always;
        add_header Access-Control-Allow-Origin * always;
        return 301 /$piw_top/$piw_canonical$piw_rest_or_slash$is_args$args;
    }}

    # Index pages, negotiated (PEP 691): /simple/ and /simple/<name>/.
    location ~ "^/simple/(?:[^/]+/)?$" {{
        if ($piw_index = 406) {{
            return 406;
        }}
        types {{
            text/html html;
            application/vnd.pypi.simple.v1+json json;
        }}
        add_header Vary Accept always;
        add_header Cache-Control "public, max-age=600" always;
        add_header Access-Control-Allow-Origin * always;
        try_files $uri$piw_index =404;
    }}

    # Wheels and their core metadata never change once published.
    location /simple/ {{
        gzip_static off;
        add_header Cache-Control {long_cache} always;
        add_header Access-Control-Allow-Origin * always;
    }}

    location = /project/ {{
        return 301 /packages.html;
    }}
    location ~ "^/p/(?<piw_p>[^/]+)/?$" {{
        return 301 /project/$piw_p/;
    }}
    location ~ "^/project/[^/]+/json/(?:index\\.json)?$" {{
        index index.json;
        add_header Cache-Control "public, max-age=600" always;
        add_header Access-Control-Allow-Origin * always;
    }}
    location /project/ {{
        add_header Cache-Control "public, max-age=600" always;
    }}

    # Build logs are stored gzipped; clients that refuse gzip get them inflated.
    location /logs/ {{
        gzip off;
        gzip_static always;
        gunzip on;
        add_header Cache-Control "public, max-age=86400" always;
        add_header Access-Control-Allow-Origin * always;
    }}

    location = /packages.json {{
        add_header Cache-Control "public, max-age=600" always;
        add_header Access-Control-Allow-Origin * always;
    }}

    # The site writer's spare files (old page bytes kept for their inodes): never served.
    location ^~ /.spare/ {{
        return 404;
    }}

    location / {{
        add_header Cache-Control "public, max-age=600" always;
    }}
}}
"""


def _default_user() -> str:
    for user in ("www-data", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    return "nobody"


def render_config(
    output_path: str | os.PathLike[str],
    prefix: str | os.PathLike[str],
    *,
    listen: str | list[str],
    access_log: str | os.PathLike[str] | None = None,
    error_log: str | os.PathLike[str] | None = None,
    user: str | None = None,
    workers: int = 1,
    daemon: bool = False,
) -> str:
    """A complete ``nginx.conf`` for a private nginx rooted at *prefix*.

    The ``user`` directive is written only when running as root (workers then drop to *user*,
    default ``www-data``, and the site's files must be world-readable).
    """
    prefix = Path(prefix)
    access_log = Path(access_log or prefix / "logs" / "access.log")
    error_log = Path(error_log or prefix / "logs" / "error.log")
    user_line = f"user {user or _default_user()};\n" if os.geteuid() == 0 else ""
    tmp = prefix / "tmp"
    site = render_site(output_path, listen=listen, access_log=access_log)
    return f"""{user_line}worker_processes {int(workers)};
daemon {"on" if daemon else "off"};
pid {prefix / "logs" / "nginx.pid"};
error_log {error_log} info;
events {{
    worker_connections 256;
}}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
{_indent(site)}
}}
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PrivateNginx:
    """An nginx of our own serving *output_path* on *host*:*port* (a free port if 0).

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        prefix: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        nginx: str = "nginx",
    ) -> None:
        self.output_path = Path(output_path).resolve()
        self.prefix = Path(prefix).resolve()
        self.host = host
        self.port = port
        self.nginx = shutil.which(nginx) or nginx
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def access_log(self) -> Path:
        """Where requests are logged, in the piw-logger format."""
        return self.prefix / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        """nginx's own error log."""
        return self.prefix / "logs" / "error.log"

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration and start nginx; return once it accepts connections."""
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            port = self.port or free_port(self.host)
            conf = self.prefix / "nginx.conf"
            conf.write_text(
                render_config(self.output_path, self.prefix, listen=f"{self.host}:{port}")
            )
            self.proc = subprocess.Popen(
                [self.nginx, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.error_log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready(port, timeout):
                self.port = port
                return
            err = self._reap()
            if attempt == attempts - 1:
                raise OSError(f"nginx did not start: {err.strip()[-500:]}")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _reap(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        return err.decode("utf-8", "replace") if err else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGQUIT), or kill after *timeout* seconds."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap()

    def records(self) -> list[dict[str, Any]]:
        """Every access-log record so far, parsed."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def __enter__(self) -> PrivateNginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
