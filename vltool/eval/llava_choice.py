"""Which option an answer names, read as LLaVA's own scoring scripts read it: strictly, item for item.

LLaVA-1.5's ScienceQA-IMG and SEED-Bench numbers come from two small scripts of haotian-liu/LLaVA
(unchanged from commit ce1aa08, "Release evaluation scripts", to the repository's last commit, c121f04).
They read far less than VLMEvalKit's lenient extraction (:mod:`vltool.eval.extraction`): issue 18's check
found the lenient reading crediting 826 more answers on a mixed ScienceQA set ("B.", "(B)", "Answer: B",
"**B**", the option's text) and 183 more on SEED, and missing 38 of LLaVA-13B's own "X. ..." answers that
are longer than five words with the letter not among the last five. Only these rules give a number
comparable with LLaVA's.

ScienceQA, ``llava/eval/eval_science_qa.py``: the answer text, as it is (not stripped), is read by the
first rule that applies (:func:`read_scienceqa`):

1. ``letter``: the whole text is one of the script's option letters A-E ("B"; not "B.", " B" or "b").
2. ``letter and text``: it starts with one of A-E, a full stop and a space ("B. dog", of any length).
3. ``the answer is``: "The answer is X" (that case) followed by one more character other than a newline
   (the script's pattern ``The answer is ([A-Z]).``) occurs exactly once; X is any capital letter
   ("The answer is B." and "The answer is BC" give B; "The answer is B" at the very end, or two such
   phrases, give nothing).
4. ``unread``: anything else names no option.

The letter is right when it is the question's answer; a letter the question has no option for ("E" on a
two-option question, "Z") counts as wrong. One deliberate change: the script knows only A-E, so a
question whose answer is the sixth option or later makes it crash (``IndexError: list index out of
range``, whatever the answers); on such a question, and only there, the letters here run as far as its
options go (:func:`scienceqa_letters`), so it is scored and every decision the script does make stays
the same.

SEED-Bench, ``scripts/convert_seed_for_submission.py``: an answer is right only when its text equals the
answer letter exactly (:func:`read_seed`: ``letter`` when the text is one of A-D, else ``unread``).
"""

import re
from collections import Counter
from dataclasses import dataclass
from string import ascii_uppercase

SCIENCEQA_SCRIPT = "llava/eval/eval_science_qa.py"
SEED_SCRIPT = "scripts/convert_seed_for_submission.py"

SCIENCEQA_LETTERS = ("A", "B", "C", "D", "E")
"""The option letters eval_science_qa.py knows (its ``--options`` default)."""

SEED_LETTERS = ("A", "B", "C", "D")

RULES = ("letter", "letter and text", "the answer is", "unread")
"""How an answer was read, in the order the rules are tried (SEED uses ``letter`` and ``unread`` only)."""

# eval_science_qa.py's "The answer is ([A-Z])." : one capital, then any one character but a newline
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


@dataclass(frozen=True)
class Reading:
    """What a script read from one answer.

    Attributes:
        letter: the letter read (eval_science_qa.py's ``parsed_ans``), or None where it read none
            (its ``"FAILED"``); it may be a letter the question has no option for.
        rule: which rule read it: one of :data:`RULES`.
    """

    letter: str | None
    rule: str


def scienceqa_letters(options: int, answer: str) -> tuple[str, ...]:
    """The letters to read: A-E, or all the question's letters where its answer is past E (the script crashes).

    Args:
        options: how many options the question has.
        answer: the letter of its right option.
    """
    return SCIENCEQA_LETTERS if answer in SCIENCEQA_LETTERS else tuple(ascii_uppercase[:options])


def read_scienceqa(text: str, letters: tuple[str, ...] = SCIENCEQA_LETTERS) -> Reading:
    """The letter eval_science_qa.py reads from an answer.

    Args:
        text: the answer, as the model gave it.
        letters: the option letters rules 1 and 2 accept (:func:`scienceqa_letters`).
    """
    if text in letters:
        return Reading(text, "letter")
    if len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        return Reading(text[0], "letter and text")
    stated = _ANSWER_IS.findall(text)
    if len(stated) == 1:
        return Reading(stated[0], "the answer is")
    return Reading(None, "unread")


def read_seed(text: str) -> Reading:
    """The letter convert_seed_for_submission.py accepts: the whole answer, when it is exactly A, B, C or D."""
    return Reading(text, "letter") if text in SEED_LETTERS else Reading(None, "unread")


def reading_notes(rules: Counter[str], unknown_letters: int, total: int, script: str) -> list[str]:
    """Lines for the report: how many answers each rule read, how many named no option (both wrong).

    Args:
        rules: how many answers each rule of :data:`RULES` read.
        unknown_letters: answers whose letter the question has no option for.
        total: how many answers there were.
        script: the script whose rules were followed, for the first line.
    """
    counts = ", ".join(f"{rule} {rules[rule]}" for rule in RULES if rules[rule])
    notes = [f"answers read as {script} reads them: {counts}"]
    if rules["unread"]:
        notes.append(f"{rules['unread']} of {total} answers name no option by {script}'s rules (counted wrong)")
    if unknown_letters:
        notes.append(f"{unknown_letters} of {total} answers name a letter that is not an option (counted wrong)")
    return notes
