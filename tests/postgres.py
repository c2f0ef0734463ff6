"""A private PostgreSQL server for the tests: Debian's binaries (`.ci/run` installs them), a fresh cluster in a
temporary folder, a free loopback port and its own socket folder; stopped and removed at the end. As root (CI),
the cluster runs as the `postgres` system user, since PostgreSQL refuses to run as root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port


def pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@contextmanager
def postgres_server(bindir: Path, database: str = "covidxr") -> Iterator[str]:
    """Yields a SQLAlchemy URL (psycopg 3) to an empty database on a private server."""
    root = Path(tempfile.mkdtemp(prefix="covidxr-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, str(bindir / tool), *args], check=True, capture_output=True, timeout=120)

    pg("initdb", "-D", str(data), "-A", "trust", "-U", "covidxr", "--no-sync", "-E", "UTF8")
    options = f"-p {port} -k {root} -h 127.0.0.1 -F"
    pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "-t", "60", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "covidxr", database)
        yield f"postgresql+psycopg://covidxr@127.0.0.1:{port}/{database}"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
