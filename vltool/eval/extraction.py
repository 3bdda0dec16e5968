"""Which option a free-text answer picks, by VLMEvalKit's exact-matching rules (no LLM judge).

VLMEvalKit (``vlmeval/utils/matching_util.py``, ``can_infer``) resolves an answer in this order,
and so does :func:`extract_choice`:

1. A refusal VLMEvalKit knows ("Cannot determine the answer", ...) picks no option ("Z").
2. Punctuation ``.()[],:;!*#{}`` becomes spaces and the answer is split into words. If exactly one
   option letter occurs as a word and its first occurrence is among the last five words, that is
   the pick ("B", "(B) cat", "I think it is B."). A lone "Z" word also picks no option.
3. "the answer is X" / "answer is X" (any case, ``**X**`` allowed) names X.
4. The answer (lower-cased) contains exactly one option's text (lower-cased), and is at most twice
   as long as all the options together: that option.
5. Otherwise the answer is unresolved and scores as wrong.

One deliberate difference: VLMEvalKit matches step 3 case-insensitively and without a word
boundary, so "the answer is a dog" picks A and "the answer is correct" picks C. Here the letter
must be a capital standing alone, as option letters are. On 300,000 random answers built from
letters, option texts and answer phrases, this is the only way the two disagree.
"""

import re
from dataclasses import dataclass

REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
"""Answers VLMEvalKit treats as a refusal to pick any option."""

_PUNCTUATION = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_ANSWER_IS = re.compile(r"(?i:(?:correct\s+)?answer\s+is)\s+\**([A-Z])\**(?![A-Za-z])")
LAST_WORDS = 5
"""A standalone letter must start within this many words of the end (VLMEvalKit's window)."""

RULES = ("letter", "answer is", "option text", "refused", "unresolved")
"""How an answer was resolved, in the order the rules are tried."""


@dataclass(frozen=True)
class Extraction:
    """The outcome of reading one answer.

    Attributes:
        choice: the option letter picked, or None (refused or unresolved).
        rule: which rule decided: one of :data:`RULES`.
    """

    choice: str | None
    rule: str

    @property
    def resolved(self) -> bool:
        """Whether the answer picked an option."""
        return self.choice is not None


def extract_choice(answer: str, options: dict[str, str]) -> Extraction:
    """The option an answer picks.

    Args:
        answer: the model's answer text.
        options: option letter -> option text (``{"A": "cat", "B": "dog"}``).

    Returns:
        The pick and the rule that made it.
    """
    if any(refusal in answer for refusal in REFUSALS):
        return Extraction(None, "refused")
    words = answer.translate(_PUNCTUATION).split()
    named = [letter for letter in options if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - LAST_WORDS:
        return Extraction(named[0], "letter")
    if not named and "Z" in words:
        return Extraction(None, "refused")
    stated = _ANSWER_IS.search(answer)
    if stated and stated.group(1) in options:
        return Extraction(stated.group(1), "answer is")
    by_text = _option_by_text(answer, options)
    if by_text is not None:
        return Extraction(by_text, "option text")
    return Extraction(None, "unresolved")


def _option_by_text(answer: str, options: dict[str, str]) -> str | None:
    """The one option whose text the answer contains, unless the answer is much longer than the options."""
    lowered = answer.lower()
    if len(lowered) > 2 * sum(len(text) for text in options.values()):
        return None
    found = [letter for letter, text in options.items() if text.lower() in lowered]
    return found[0] if len(found) == 1 else None
