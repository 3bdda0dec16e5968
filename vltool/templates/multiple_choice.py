"""The LLaVA-family multiple-choice prompt, shared by training data, MMBench and the eval benchmarks."""

import re

from vltool.constants import IMAGE_TOKEN

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
ANSWER_INSTRUCTION_CN = "请直接回答选项字母。"
_CJK = re.compile(r"[\u4e00-\u9fff]")


def is_chinese(text: str) -> bool:
    """Whether ``text`` holds CJK ideographs (VLMEvalKit's ``cn_string`` test)."""
    return _CJK.search(text) is not None


def build_prompt(question: str, options: dict[str, str], hint: str = "", with_image: bool = True) -> str:
    """The LLaVA-family multiple-choice prompt (LLaVA's ``model_vqa_mmbench.py``).

    The image marker, the hint, the question, one ``A. ...`` line per option, then the
    instruction to answer with the letter, in Chinese when the question or its options are.
    """
    lines = ([hint] if hint else []) + [question]
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    chinese = is_chinese(question) or any(is_chinese(text) for text in options.values())
    lines.append(ANSWER_INSTRUCTION_CN if chinese else ANSWER_INSTRUCTION)
    return (IMAGE_TOKEN + "\n" if with_image else "") + "\n".join(lines)
