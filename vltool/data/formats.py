r"""Read dataset files (JSON or JSONL) in the LLaVA, Qwen-VL or messages format into :class:`Sample`.

- LLaVA: ``{"image": "a.jpg" | [...], "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": "..."}]}``
- Qwen-VL: ``{"conversations": [{"from": "user", "value": "Picture 1: <img>a.jpg</img>\\n..."},
  {"from": "assistant", "value": "<ref>the dog</ref><box>(219,424),(576,896)</box>"}]}``
- messages: ``{"messages": [{"role": "user", "content": "<image>..."}, ...], "images": [...]}``
"""

import json
import re
from pathlib import Path
from typing import Any

from vltool.constants import IMAGE_TOKEN
from vltool.data.json_stream import RawRecord, RecordReader
from vltool.data.sample import Sample
from vltool.errors import DatasetError
from vltool.templates.message import Message

FORMATS = ("auto", "llava", "qwen_vl", "messages")
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
QWEN_VL_IMAGE = re.compile(r"Picture \d+:\s*<img>(.*?)</img>")
BOX = re.compile(r"<box>(.*?)</box>")
BOX_COORDS = re.compile(r"^\((\d+),(\d+)\),\((\d+),(\d+)\)$")


def parse_record(raw: RawRecord, path: Path) -> Any:
    """The parsed JSON of one record.

    Raises:
        DatasetError: the record is not valid JSON (only a JSONL line can be: a JSON list's
            elements were decoded once already); names the line and column.
    """
    try:
        return json.loads(raw.text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}:{raw.line}: invalid JSON ({err.msg} at column {err.colno}); fix or remove this line."
        ) from None


def read_records(path: str | Path) -> list[Any]:
    """Read every record of a JSON list or a JSONL file (small files: tests, chat exports).

    Raises:
        DatasetError: the file is missing, or not valid JSON (names the line).
    """
    return [parse_record(raw, Path(path)) for raw in RecordReader(path)]


def detect_format(record: dict[str, Any]) -> str:
    """Guess a record's format from its keys and image markers."""
    if "messages" in record:
        return "messages"
    turns = record.get("conversations") or []
    if any("<img>" in str(turn.get("value", "")) for turn in turns if isinstance(turn, dict)):
        return "qwen_vl"
    return "llava"


def to_sample(record: dict[str, Any], index: int, source: str, dataset_format: str = "auto") -> Sample:
    """Convert one record to a :class:`Sample` and validate it.

    Args:
        record: the parsed JSON object.
        index: its position in the file (used as the id when the record has none).
        source: the file name, for error messages.
        dataset_format: one of :data:`FORMATS`.

    Raises:
        DatasetError: naming the file and sample, for any structural problem.
    """
    sample_id = str(record.get("id", index)) if isinstance(record, dict) else str(index)
    where = f"{source}: sample {sample_id}"
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    kind = detect_format(record) if dataset_format == "auto" else dataset_format
    if kind == "messages":
        turns = [(m.get("role"), m.get("content")) for m in _list(record, "messages", where)]
        images = _image_list(record.get("images"), where)
    else:
        turns = [(t.get("from"), t.get("value")) for t in _list(record, "conversations", where)]
        images = _image_list(record.get("image"), where)
    messages = []
    for role, content in turns:
        if role not in ROLE_ALIASES or not isinstance(content, str):
            raise DatasetError(
                f"{where}: turn with role {role!r} and content {type(content).__name__}; "
                f"roles must be one of {sorted(ROLE_ALIASES)} with text content."
            )
        if kind == "qwen_vl":
            images += QWEN_VL_IMAGE.findall(content)
            content = QWEN_VL_IMAGE.sub(IMAGE_TOKEN, content)
            _check_boxes(content, where)
        messages.append(Message(ROLE_ALIASES[role], content))
    _check_structure(messages, images, where)
    return Sample(sample_id=sample_id, messages=messages, images=images)


def load_samples(path: str | Path, dataset_format: str = "auto") -> list[Sample]:
    """Read and validate every sample of a dataset file."""
    if dataset_format not in FORMATS:
        raise DatasetError(f"unknown dataset_format '{dataset_format}'; use one of {', '.join(FORMATS)}.")
    name = Path(path).name
    return [to_sample(r, i, name, dataset_format) for i, r in enumerate(read_records(path))]


def _list(record: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DatasetError(f"{where}: '{key}' must be a list of objects.")
    return value


def _image_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DatasetError(f"{where}: image field must be a path or a list of paths.")


def _check_boxes(content: str, where: str) -> None:
    for box in BOX.findall(content):
        match = BOX_COORDS.match(box.replace(" ", ""))
        if not match or any(int(v) > 1000 for v in match.groups()):
            raise DatasetError(f"{where}: box '{box}' is not '(x1,y1),(x2,y2)' on the 0-1000 grid.")


def _check_structure(messages: list[Message], images: list[str], where: str) -> None:
    roles = [m.role for m in messages if m.role != "system"]
    if "assistant" not in roles:
        raise DatasetError(f"{where}: conversation has no assistant turn; add the reply or remove the sample.")
    if any(m.role == "system" for m in messages[1:]):
        raise DatasetError(f"{where}: a system turn may only come first.")
    if any(a == b for a, b in zip(roles, roles[1:], strict=False)) or roles[0] != "user":
        raise DatasetError(f"{where}: turns must alternate user/assistant, starting with user (got {roles}).")
    tags = sum(m.content.count(IMAGE_TOKEN) for m in messages)
    if tags != len(images):
        raise DatasetError(
            f"{where}: {tags} '{IMAGE_TOKEN}' tag(s) but {len(images)} image(s); each image needs exactly one tag."
        )
