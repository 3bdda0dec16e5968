"""Read a dataset file one record at a time: a JSON list or JSONL, never the whole file as Python objects.

LLaVA's ``llava_v1_5_mix665k.json`` is one 1 GB JSON list. ``json.load`` on it builds 665k
dicts at once (several GB of Python objects) before the first sample is looked at. Here the
file is decoded in blocks and each element is cut out with the C decoder's ``raw_decode``, so
memory stays at a block plus one record, and every record comes with the line it starts on
for error messages. Records are handed on as their JSON text: the processes that tokenise
them parse it again, which costs less than pickling the parsed dicts to them.
"""

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from vltool.errors import DatasetError

BLOCK_BYTES = 1 << 24
"""How much of a JSON list is read (and decoded) at a time."""
_LONGEST_CUT = 16
"""A JSON literal or escape cut by the window's end fails at most this many characters before it."""
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_TYPE_NAMES = {"{": "an object", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}


class RawRecord(NamedTuple):
    """One record of a dataset file, not yet parsed.

    Attributes:
        index: its position among the file's records (blank JSONL lines do not count).
        line: the 1-based line it starts on.
        text: its JSON text.
    """

    index: int
    line: int
    text: str


class RecordReader:
    """Iterate over the records of a ``.jsonl`` file (one per line) or a JSON list (any other suffix).

    ``bytes_read`` says how far into the file reading has got, for progress bars.

    Raises (while iterating):
        DatasetError: the file is missing, is not a JSON list, or a list element is not valid
            JSON (the message names the line). A bad JSONL line is not an error here: its text
            is passed on and fails where it is parsed, so a check can list every bad line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: dataset file not found; check train_dataloader.dataset.data_path.")
        self.size = self.path.stat().st_size
        self.bytes_read = 0

    def __iter__(self) -> Iterator[RawRecord]:
        return self._jsonl() if self.path.suffix == ".jsonl" else _ListScanner(self).records()

    def _jsonl(self) -> Iterator[RawRecord]:
        index = 0
        with self.path.open("rb") as file:
            for line_no, line in enumerate(file, start=1):
                self.bytes_read += len(line)
                if line.strip():
                    yield RawRecord(index, line_no, line.decode("utf-8", errors="replace"))
                    index += 1


class _ListScanner:
    """The state of cutting a JSON list into elements: a decoded window of the file and a position in it."""

    def __init__(self, reader: RecordReader) -> None:
        self.reader = reader
        self.decoder = json.JSONDecoder()
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.buffer = ""
        self.pos = 0
        self.line = 1  # the line of buffer[pos]
        self.base = 0  # where buffer[0] is in the file, in characters
        self.line_start = 0  # where that line starts, in characters
        self.eof = False

    def _fill(self) -> None:
        """Drop what has been consumed and decode the next block onto the window."""
        block = self.file.read(BLOCK_BYTES)
        self.reader.bytes_read += len(block)
        self.eof = not block
        self.base += self.pos
        self.buffer = self.buffer[self.pos :] + self.utf8.decode(block, final=self.eof)
        self.pos = 0

    def _advance(self, end: int) -> None:
        """Consume the buffer up to ``end``, counting its lines."""
        newlines = self.buffer.count("\n", self.pos, end)
        if newlines:
            self.line += newlines
            self.line_start = self.base + self.buffer.rfind("\n", self.pos, end) + 1
        self.pos = end

    def _peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), consuming the whitespace."""
        while True:
            self._advance(_WHITESPACE.match(self.buffer, self.pos).end())
            if self.pos < len(self.buffer) or self.eof:
                return self.buffer[self.pos : self.pos + 1]
            self._fill()

    def _error(self, err: json.JSONDecodeError, index: int) -> DatasetError:
        self._advance(err.pos)
        column = self.base + err.pos - self.line_start + 1
        return DatasetError(
            f"{self.reader.path}:{self.line}: invalid JSON ({err.msg}: column {column}) in sample {index}; "
            "fix the file."
        )

    def _element(self, index: int) -> str:
        """Decode one element at the position, reading more of the file while it runs past the window."""
        while True:
            try:
                _value, end = self.decoder.raw_decode(self.buffer, self.pos)
                break
            except json.JSONDecodeError as err:
                # an element cut off by the window fails at (or a literal's width from) the window's
                # end, or inside a string still open there; anything else is a real error
                cut_off = err.pos >= len(self.buffer) - _LONGEST_CUT or err.msg.startswith("Unterminated string")
                if self.eof or not cut_off:
                    raise self._error(err, index) from None
                self._fill()
        text = self.buffer[self.pos : end]
        self._advance(end)
        return text

    def records(self) -> Iterator[RawRecord]:
        with self.reader.path.open("rb") as self.file:
            self._fill()
            first = self._peek()
            if first != "[":
                found = "an empty file" if not first else _TYPE_NAMES.get(first, "a number")
                raise DatasetError(
                    f"{self.reader.path}: expected a JSON list of samples (or a .jsonl file), got {found}."
                )
            self.pos += 1
            index = 0
            if self._peek() == "]":
                return
            while True:
                line = self.line
                yield RawRecord(index, line, self._element(index))
                index += 1
                following = self._peek()
                if following == "]":
                    return
                if following != ",":
                    column = self.base + self.pos - self.line_start + 1
                    found = repr(following) if following else "the end of the file"
                    raise DatasetError(
                        f"{self.reader.path}:{self.line}: invalid JSON (expected ',' or ']' after sample "
                        f"{index - 1}, found {found}: column {column}); fix the file."
                    )
                self.pos += 1
                self._peek()
