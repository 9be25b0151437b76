"""What to say of an :class:`OSError` about a path the user named.

The kernel's reason is often about a path the user never wrote: making ``out/image``
when ``out`` is a file fails with "File exists" (for ``out``) or "Not a directory" (for
``out/image``, or a temporary name beside it).  :func:`writing_failed` names the file
that is in the way instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["blocking_file", "reason", "try_again", "writing_failed"]


def blocking_file(path: str | os.PathLike[str]) -> Path | None:
    """The nearest existing parent of ``path`` when it is not a directory (a file where a
    directory must be), else None."""
    for parent in Path(path).parents:
        try:
            if parent.exists():
                return None if parent.is_dir() else parent
        except OSError:
            return None
    return None


def reason(e: OSError) -> str:
    """The kernel's reason, lowercased as the middle of a sentence: ``no space left on
    device``."""
    text = e.strerror or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def try_again(e: OSError) -> str:
    """What to do after a failed write: make room (a full disk or quota), else fix the
    cause, and try again."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "make room and try again"
    return "fix that and try again"


def writing_failed(e: OSError, shown: str, path: str | os.PathLike[str] | None = None) -> str:
    """``<reason> writing <shown>``, or, when a parent of ``path`` (``shown`` when not
    given) is a file, ``cannot write <shown>: <parent> is not a directory``."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = blocking_file(shown if path is None else path)
        if blocker is not None:
            return f"cannot write {shown}: {blocker} is not a directory"
    return f"{reason(e)} writing {shown}"
