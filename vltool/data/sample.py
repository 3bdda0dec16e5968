"""The one internal form every dataset format is read into."""

from dataclasses import dataclass, field

from vltool.templates.message import Message


@dataclass
class Sample:
    """One training or evaluation example.

    Attributes:
        sample_id: the id users see in error messages (the file's ``id`` field, or the index).
        messages: the turns in order; an optional leading system turn.
        images: image paths (relative to the image folder, or absolute), one per ``<image>``
            marker, in order of appearance.
    """

    sample_id: str
    messages: list[Message]
    images: list[str] = field(default_factory=list)
