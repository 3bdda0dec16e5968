"""Writing files and folders so that a reader never sees half of one: write beside the target, then rename.

A rename within one folder is atomic, so whoever opens the target sees the old content or the
new, never a file cut short by a crash, a kill or a full disk. The low-level module of vltool:
it imports only the standard library, so every other module may use it.
"""

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file renamed into place, so a failure never leaves half a file.

    Args:
        path: the file to (re)write.
        write: writes the content to the temporary path it is given (a hidden sibling of
            ``path`` with the same suffix, since some writers choose the format by it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove(path: Path) -> None:
    """Delete a file or a folder tree; nothing when it does not exist."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def move_into_place(staged: Path, final: Path, *, replace: bool = True) -> bool:
    """Rename a completely written file or folder ``staged`` to ``final`` (same parent folder).

    A file replaces a file in one atomic rename. Nothing replaces a folder in one rename, so an
    existing folder ``final`` is first renamed aside (``.NAME.old``) and deleted once the new
    one is in place: a reader sees the old folder or the new one, never a mixture, and a kill
    between the two renames leaves the old one under ``.NAME.old``.

    Args:
        staged: the new content, next to ``final``.
        final: where it goes.
        replace: False keeps an existing ``final`` (another process published the same
            content first) and deletes ``staged`` instead; never replaces anything.

    Returns:
        Whether ``staged`` is now ``final``.
    """
    staged, final = Path(staged), Path(final)
    if not replace:
        try:
            if staged.is_dir():
                os.rename(staged, final)  # refuses a non-empty folder at ``final``
            else:
                os.link(staged, final)  # refuses any file at ``final``; a plain rename would replace it
                staged.unlink()
            return True
        except OSError:
            if not final.exists():
                raise
            remove(staged)
            return False
    if final.is_dir() or (staged.is_dir() and final.exists()):
        retired = final.with_name(f".{final.name}.old")
        remove(retired)
        os.replace(final, retired)
        os.replace(staged, final)
        remove(retired)
    else:
        os.replace(staged, final)
    return True


@contextmanager
def staged_directory(final: Path, tag: str = "partial") -> Iterator[Path]:
    """Yield an empty folder beside ``final`` to write into; on success it becomes ``final``.

    An error inside the block deletes the staged folder and leaves an existing ``final`` as it
    was, so a failed or interrupted writer never destroys the previous version.

    Args:
        final: the folder to (re)write.
        tag: part of the staged folder's name, ``.NAME.TAG``; a leftover of a killed writer
            with the same name is deleted first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.with_name(f".{final.name}.{tag}")
    remove(staged)
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        remove(staged)
        raise
    move_into_place(staged, final)
