"""Prompt templates as data: each ``*.json`` file here declares one chat format.

A template renders a conversation to text and reports which character spans are learned
(assistant replies and their end-of-turn marker); tokenisation turns those spans into labels.
"""

import difflib
import json
from dataclasses import dataclass

from vltool.constants import IMAGE_TOKEN, TEMPLATES_DIR
from vltool.errors import ConfigError
from vltool.templates.message import Message


@dataclass(frozen=True)
class Template:
    """A chat format. Placeholders: ``{system}``, ``{input}``, ``{output}``, ``{n}`` (image number).

    Attributes:
        name: the name configs and ``--prompt-template`` use.
        description: one line for listings.
        prefix: text before everything (a BOS string, for example).
        system: how a system prompt renders; empty if the format has none.
        default_system: used when a conversation brings no system turn.
        user: a user turn, including the header that opens the assistant's reply.
        assistant: an assistant reply; everything it renders is learned.
        separator: text after each assistant reply; not learned.
        image: how one image renders; ``<image>`` stands for its visual tokens.
        stop_words: strings that end generation.
        drop_user_text: keep only the images of user turns (LLaVA's pretraining format).
        final_reply_header: text between the assistant header and the reply for the last
            assistant turn only, when it follows a user turn, and at the end of a generation
            prompt; not learned. Qwen3 marks non-thinking replies this way (an empty think
            block) while earlier replies in the history render without it.
    """

    name: str
    description: str
    prefix: str
    system: str
    default_system: str
    user: str
    assistant: str
    separator: str
    image: str
    stop_words: tuple[str, ...]
    drop_user_text: bool = False
    final_reply_header: str = ""

    def render(self, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
        """Render a conversation.

        A conversation that ends with a user turn renders as a generation prompt: the user
        format already ends with the header that opens the assistant's reply, and
        ``final_reply_header`` follows it. The last reply gets the same header when a user turn
        precedes it, so a trained conversation reads as its generation prompt plus the reply.

        Args:
            messages: turns; an optional leading system turn, then user/assistant turns.

        Returns:
            The text, and the ``(start, end)`` character spans that are learned.
        """
        system = self.default_system
        if messages and messages[0].role == "system":
            system, messages = messages[0].content, messages[1:]
        text = self.prefix
        if self.system and system:
            text += self.system.replace("{system}", system)
        spans: list[tuple[int, int]] = []
        image_number = 0
        # only the reply after the last user turn gets the header (Qwen3 renders older replies without it)
        final_reply = len(messages) - 1 if any(m.role == "user" for m in messages) else -1
        for index, message in enumerate(messages):
            raw = message.content
            if message.role == "user" and self.drop_user_text:
                raw = IMAGE_TOKEN * raw.count(IMAGE_TOKEN)
            content, image_number = self._render_images(raw, image_number)
            if message.role == "user":
                text += self.user.replace("{input}", content)
            else:
                if index == final_reply:
                    text += self.final_reply_header
                start = len(text)
                text += self.assistant.replace("{output}", content)
                spans.append((start, len(text)))
                text += self.separator
        if messages and messages[-1].role == "user":
            text += self.final_reply_header
        return text, spans

    def _render_images(self, content: str, first: int) -> tuple[str, int]:
        """Replace each ``<image>`` marker with this template's image format, numbering from 1."""
        if self.image == IMAGE_TOKEN or IMAGE_TOKEN not in content:
            return content, first + content.count(IMAGE_TOKEN)
        pieces = content.split(IMAGE_TOKEN)
        out = pieces[0]
        for piece in pieces[1:]:
            first += 1
            out += self.image.replace("{n}", str(first)) + piece
        return out, first


def available_templates() -> list[str]:
    """Names of the shipped templates."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.json"))


def load_template(name: str) -> Template:
    """Load a shipped template by name.

    Raises:
        ConfigError: the name is unknown (the message lists close names and all names).
    """
    path = TEMPLATES_DIR / f"{name}.json"
    if not path.is_file():
        names = available_templates()
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown template '{name}'.{hint} Available: {', '.join(names)}.")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["stop_words"] = tuple(data["stop_words"])
    return Template(**data)
