"""Writing files so that a crash, a Ctrl-C or a full disk never leaves half of one, and OS errors in one line.

Run records, checkpoints, reports and exports go through `atomic_write`: a temporary name beside the target,
renamed over it once complete (the decoded cache renames its own temporary files the same way).
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, Callable


class RecordError(ValueError):
    """A file that cannot be read or written; the message names it and what to do."""


def first_line(err: BaseException, limit: int = 120) -> str:
    """What an exception says, cut to its first line (at most `limit` characters); its type's name when empty."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def describe_os_error(err: OSError, path: Path) -> str:
    """One line a user can act on: 'no space left on <path>', 'cannot write <path>: read-only ...'."""
    if err.errno == errno.ENOSPC:
        return f"no space left on {path.parent} while writing {path.name}; free some space and run again"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {(err.strerror or str(err)).lower()}; choose a writable results folder " \
               "(--results)"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot create {path}: a file stands where a folder should be; choose another results folder"
    return f"cannot write {path}: {err.strerror or err}"


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename over `path`; on any failure the temporary is removed, the target untouched,
    and an OSError becomes a RecordError naming the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RecordError(describe_os_error(err, path)) from err
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    import torch  # late: reading records needs no torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def make_dir(folder: Path, writing: Path | None = None) -> None:
    """Create a folder (and its parents), or say in one line why it cannot be (read-only, a file in the way),
    naming `writing` (the file it is for) when given, else the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecordError(describe_os_error(err, writing or folder)) from err


def figure_target(out: Path | str | None, default: Path, *, flag: str = "--out",
                  companions: dict[str, str] | None = None) -> Path:
    """Where a figure the user named with `flag` goes: `default` without one; in a folder (existing, or written
    with a trailing slash), default's file name; else a .png path. companions: suffix -> how the file lambdalib
    writes beside it begins (`{path}`: the figure's); one that does not begin so is the user's, and refused."""
    if out is None or str(out) == "":
        path = Path(default)
    else:
        path = Path(out).expanduser()
        if path.is_dir() or str(out).endswith(("/", os.sep)):
            path = path / Path(default).name
        elif path.suffix.lower() != ".png":
            raise ValueError(f"{flag} {out}: a figure is written as .png; give a .png path or a folder")
    for suffix, first_line in (companions or {}).items():
        beside = path.with_suffix(suffix)
        if foreign(beside, first_line.format(path=path)):
            raise ValueError(f"{flag} {out}: {beside} exists and is not a file lambdalib wrote; it is left as it "
                             "is: choose another name or folder")
    if path.is_dir():
        raise ValueError(f"{flag} {out}: {path} is a folder; give a .png path")
    return path


def foreign(path: Path, start: str | bytes) -> bool:
    """Whether `path` holds what lambdalib did not write there (a folder, or a file not beginning with `start`)."""
    start = start.encode() if isinstance(start, str) else start
    try:
        with open(path, "rb") as handle:
            return handle.read(len(start)) != start
    except OSError as err:  # missing: nothing in the way; a folder or an unreadable file: someone else's
        return not isinstance(err, FileNotFoundError)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine; True when that cannot be told (another user's
    process, a pid <= 0), so that nobody's files are taken over or removed on a guess."""
    if pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # PermissionError: it exists, someone else's
            pass
    return True
