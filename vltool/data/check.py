"""``vltool check-dataset``: read every sample, decode every image, report every problem at once."""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from vltool.data.formats import read_records, to_sample
from vltool.data.images import load_image
from vltool.data.tokenization import tokenize_conversation
from vltool.errors import DatasetError
from vltool.templates import Template


@dataclass
class DatasetCheck:
    """What a full pass over a dataset found.

    Attributes:
        num_samples: records in the file.
        num_images: image references checked.
        num_text_only: samples without images.
        lengths: token length of each valid sample (before truncation, image tokens included).
        truncated: ids of samples longer than ``max_length``.
        problems: one line per bad sample or image, naming it.
    """

    num_samples: int = 0
    num_images: int = 0
    num_text_only: int = 0
    lengths: list[int] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_dataset(
    data_path: str,
    image_folder: str | None,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    image_seq_length: int,
    max_length: int,
    dataset_format: str = "auto",
) -> DatasetCheck:
    """Validate every sample of ``data_path`` without stopping at the first problem."""
    result = DatasetCheck()
    folder = Path(image_folder) if image_folder else Path(data_path).parent
    try:
        records = read_records(data_path)
    except DatasetError as err:
        result.problems.append(str(err))
        return result
    name = Path(data_path).name
    result.num_samples = len(records)
    for index, record in enumerate(records):
        try:
            sample = to_sample(record, index, name, dataset_format)
        except DatasetError as err:
            result.problems.append(str(err))
            continue
        conv = tokenize_conversation(sample.messages, template, tokenizer, image_seq_length)
        result.lengths.append(len(conv.input_ids))
        if len(conv.input_ids) > max_length:
            result.truncated.append(sample.sample_id)
        result.num_text_only += not sample.images
        for image in sample.images:
            result.num_images += 1
            try:
                load_image(folder / image)
            except DatasetError as err:
                result.problems.append(f"{name}: sample {sample.sample_id}: {err}")
    return result
