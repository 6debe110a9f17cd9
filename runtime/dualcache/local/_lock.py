"""One emulator per data folder: an exclusive ``flock`` on a file inside it, held while the server runs.

Two emulators on one folder would share one SQLite file and overwrite each other's outputs file; the
second is refused before it writes anything but the lock file itself. The lock goes with the process
(the kernel drops it when the file is closed, also on a crash), so a stale file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dualcache._exceptions import ConfigError

__all__ = ["LOCK_FILENAME", "DataDirLock"]

LOCK_FILENAME = "emulator.lock"


class DataDirLock:
    """The exclusive lock of one data folder.

    Args:
        data_dir: The emulator's data folder (created when missing, as the store would create it).
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILENAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's id into the lock file.

        Raises:
            ConfigError: another emulator holds it; the one-line message names the folder and its pid.
        """
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the holder's pid must stay readable when we lose the race.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process (pid not written yet)"
            raise ConfigError(
                f"data folder {str(self.data_dir)!r} is in use by another dualcache emulator ({who}); stop it, "
                "or give this one another folder with --data"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; only the lock on it matters."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
