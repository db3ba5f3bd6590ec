"""Private state on disk: directories 0700, files 0600, whatever the umask says.

Every long-running fedgov process (node, coordinator) calls
:func:`private_umask` first, so every file it creates — databases and their
WAL files, outputs such as ``outputs/<job>/aligned_ids.csv``, the privacy
budget and ledger databases, caches — is readable by its owner only. The
stores also narrow files that an older version left wider
(:func:`open_private_db`). Public files a process writes on purpose
(certificates, ``ledger.pub``, ``coordinator.addr``) set their mode
explicitly.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from fedgov.errors import ConfigError

#: umask of node and coordinator processes: no group or other permission bits.
PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """Set the process umask to 0o077; return the previous one."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it mode 0700; refuse a symlink.

    Guarantees on return: ``path`` is a real directory (not a symlink) that
    only its owner can list or enter, whatever the umask or an earlier mode.
    """
    path = Path(path)
    if path.is_symlink():
        raise ConfigError("refusing a symlink where a private directory belongs", where=str(path))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def open_private_db(path: Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (creating it 0600 if needed) an SQLite database in a 0700 directory.

    Guarantees: the directory is 0700 and the database file 0600 before
    SQLite writes a byte, so its WAL and shared-memory files get 0600 too
    (SQLite gives them the database file's mode); files left with wider modes
    by an older version are narrowed. The file is never opened through a
    symlink at creation.
    """
    path = Path(path)
    private_dir(path.parent)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if f.exists():
            os.chmod(f, 0o600)
    return sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=timeout)
