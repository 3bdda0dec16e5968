"""The VQA answer normalisation and the soft VQA accuracy over ten human answers.

:func:`normalize_answer` follows the answer processor of the official VQA evaluation, as EvalAI and
LLaVA's ``llava/eval/m4c_evaluator.py`` (``EvalAIAnswerProcessor``, from facebookresearch/mmf) run it,
step for step:

1. Lower case; commas and question marks are deleted; ``'s`` gets a space before it; strip.
2. Newlines and tabs become spaces; strip.
3. Each mark of :data:`PUNCTUATION` is deleted everywhere when it touches a space somewhere in the
   text ("yes !" -> "yes"), and otherwise replaced by a space ("red/blue" -> "red blue").
4. A period is deleted unless a digit follows it ("3.5" stays, "st." -> "st"). The reference's
   pattern means "not between digits" but its look-behind is mistyped, so only the digit after
   counts ("3." -> "3"); that is the behaviour matched here.
5. The text is split into words: number words become digits (:data:`NUMBER_WORDS`), the articles
   a, an, the are dropped, and words in :data:`CONTRACTIONS` get their apostrophe back.

:func:`vqa_accuracy` is the m4c TextVQA soft score: each of the ten human answers is left out in
turn, the prediction scores ``min(1, matches among the other nine / 3)``, and the ten scores are
averaged (so 3 matching humans give 0.9 and 4 or more give 1.0).
"""

import re

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
"""Words written without their apostrophe -> the contraction, as the VQA evaluation lists them.

Kept entry for entry, quirks included: the capitalised keys ("Im", "Ive") never match because the
text is lower-cased first, and "somebody'd" maps to "somebodyd".
"""

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
"""Number words the evaluation writes as digits (only whole words, only up to ten)."""

ARTICLES = frozenset({"a", "an", "the"})
"""Words dropped from an answer."""

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
"""Marks deleted or replaced by a space (step 3). Commas and question marks are already gone by then."""

# the reference's period pattern has a mistyped look-behind, so in effect a period survives only
# when a digit follows it
_PERIOD = re.compile(r"\.(?!\d)")
# the reference passes re.UNICODE (32) where re.sub takes its count, so it deletes at most 32 periods
_MAX_PERIODS_REMOVED = 32

HUMAN_MATCHES_FOR_FULL_CREDIT = 3
"""An answer given by this many of the other annotators scores 1."""


def _tokenize(text: str) -> str:
    """Step 1: lower case, commas and question marks deleted, ``'s`` split off, stripped."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _punctuation(text: str) -> str:
    """Steps 3 and 4: punctuation marks deleted or spaced out, then periods not before a digit deleted."""
    out = text
    for mark in PUNCTUATION:
        # whether a mark is deleted or spaced out is decided on the whole text, once per mark
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def _words(text: str) -> str:
    """Step 5: number words to digits, articles dropped, contractions restored, single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it.

    Args:
        text: a model's or an annotator's answer, e.g. ``"Two dogs."``.

    Returns:
        The normalised answer, e.g. ``"2 dogs"``.
    """
    text = _tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The soft VQA accuracy of one prediction against the human answers (m4c's TextVQA rule).

    Args:
        prediction: the model's answer (raw; normalised here).
        answers: the human answers (raw; ten in TextVQA and VQAv2).

    Returns:
        A score in 0..1: for each human answer left out in turn, ``min(1, matches among the
        others / 3)``, averaged.

    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer.")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(answer) == predicted for answer in answers]
    total = sum(matches)
    # leaving out a matching answer removes one match from the others, a non-matching one removes none
    scores = [min(1.0, (total - left_out) / HUMAN_MATCHES_FOR_FULL_CREDIT) for left_out in matches]
    return sum(scores) / len(scores)
