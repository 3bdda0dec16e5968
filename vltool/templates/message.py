"""One turn of a conversation: what templates render, datasets are read into and chat sessions hold."""

from dataclasses import dataclass


@dataclass
class Message:
    """One turn. ``content`` is text in which each image appears as the ``<image>`` marker."""

    role: str
    content: str
