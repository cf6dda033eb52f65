"""The one way arvc writes a file it must not leave half-written: beside the target, synced, renamed over.

`atomic_file(path)` yields a fresh temporary path in `path`'s folder; the caller writes it (by path, with
whatever library: torch.save, safetensors, soundfile, faiss, matplotlib). On a clean exit the file is
fsynced, renamed over `path` with `os.replace` (atomic on one file system) and the folder is fsynced where
the platform allows, so after a crash `path` is either the old file or the complete new one. On any error
the temporary file is removed and `path` is left as it was.

- The temporary name is unique (`.NAME.<random>.tmp`, created with O_EXCL), so two writers of one folder,
  or of one file, never share a temporary file; the last rename wins.
- The file gets mode 0666 minus the umask, like a plain `open(path, "w")` (0644 under the usual umask
  022), not the 0600 of `tempfile.mkstemp`. The kernel applies the umask when the temporary file is
  created; that mode is set again before the rename, because some writers (safetensors' `save_file`)
  replace the file they are given with a 0600 one of their own.
- A write that fails (a full disk, a file size limit, a read-only folder) is a :class:`WriteError` naming
  the file, the cause and what to do, whatever the writer raised: Python's OSError, torch's zip writer's
  RuntimeError ("unexpected pos ..."), soundfile's LibsndfileError ("System error"), safetensors'
  SafetensorError. It is an OSError, so callers that catch OSError keep working.
- Temporary names start with a dot and end with `.tmp` (plus `suffix`, for writers that pick the format
  from the extension), so stale ones from a killed process are easy to find and never look like results.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WriteError", "atomic_file", "cache_dir", "write_bytes", "write_text"]


class WriteError(OSError):
    """A file could not be written; `path` is as it was (old content, or absent) and no temporary is left."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = Path(path)
        detail = str(cause) or type(cause).__name__
        if isinstance(cause, OSError) and cause.strerror and cause.strerror not in detail:
            detail = f"{detail} ({cause.strerror})"
        super().__init__(
            getattr(cause, "errno", None),
            f"could not write {self.path}: {type(cause).__name__}: {detail}. The disk may be full, or the "
            f"folder read-only or over a file size limit; free space or fix that and try again "
            f"({self.path.name} was left as it was)",
        )

    def __str__(self) -> str:
        return self.strerror


def _is_write_failure(error: BaseException) -> bool:
    """What writers raise when the bytes do not reach the disk (besides OSError)."""
    names = {klass.__name__ for klass in type(error).__mro__}
    return isinstance(error, (OSError, RuntimeError)) or "SafetensorError" in names


_TEMP_MODE = 0o666  # the umask is applied by the kernel, as for any newly created file


def _create_temporary(path: Path, suffix: str) -> Path:
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            fd = os.open(
                candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _TEMP_MODE
            )
        except FileExistsError:
            continue
        os.close(fd)
        return candidate


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some platforms (Windows) cannot open a folder, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    `suffix` is appended to the temporary name for writers that choose the format from the extension
    (matplotlib's savefig, soundfile). The folder of `path` is created if missing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _create_temporary(path, suffix)
    except OSError as error:
        raise WriteError(path, error) from error
    try:
        mode = stat.S_IMODE(os.stat(temporary).st_mode)
        yield temporary
        os.chmod(temporary, mode)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, WriteError) or not _is_write_failure(error):
            raise
        raise WriteError(path, error) from error
    _fsync_folder(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding=encoding)


def cache_dir() -> Path:
    """Where arvc keeps what it makes once and reuses (generated demo audio, converted HuBERT checkpoints):
    $ARVC_CACHE_DIR, else ~/.cache/arvc."""
    return Path(os.environ.get("ARVC_CACHE_DIR", Path.home() / ".cache" / "arvc")).expanduser()
