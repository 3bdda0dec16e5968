"""An LLM judge for the MMBench answers exact matching cannot read, as VLMEvalKit runs one by default.

VLMEvalKit (``vlmeval/dataset/utils/multiple_choice.py``, ``extract_answer_from_item``) asks a chat
model which option an answer means, with a fixed few-shot prompt: English, or Chinese when the
question holds CJK ideographs (``cn_string``). The reply is read by the exact-matching rules; a
reply naming no option is asked again, up to three times, and after the third a random pick among
the options and "Z" (no option) is taken. This module does the same, and writes its own prompt
text identical to VLMEvalKit's so a judge sees the words it was calibrated on.

Differences, both deliberate:

- Only answers that exact matching leaves unresolved reach the judge (VLMEvalKit's CircularEval
  path does the same; its vanilla path also sends every answer of ten characters or more).
  Answers that exact matching reads as a refusal stay refused, as there.
- The random pick is seeded per question index (VLMEvalKit seeds once per run), so it does not
  depend on the order in which concurrent replies arrive, and a rerun picks the same.

Verdicts are kept in a JSON-lines file beside the scores (VLMEvalKit keeps a pickle), keyed by the
whole request, so a rescore asks the judge only what it has not answered yet. Random picks are not
kept: the next run asks again, as a failed request may succeed then.
"""

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from vltool.eval.api_client import ApiRequestError, ChatClient
from vltool.eval.extraction import Extraction, extract_choice
from vltool.templates.multiple_choice import is_chinese

JUDGE_RULES = ("judge", "judge: no option", "judge failed: random")
"""How the judge resolved an answer: it named an option, it said none fits ("Z"), or it never answered usably."""

KEPT_RULES = JUDGE_RULES[:2]
"""The verdicts a :class:`VerdictCache` keeps: the judge's own answers, not the random pick."""

ATTEMPTS = 3
"""Judge replies asked for per answer before the random pick (VLMEvalKit's ``retry``)."""

SEED = 2680
"""VLMEvalKit's ``rd.seed`` for MMBench scoring; here combined with the question index."""

MAX_TOKENS = 256
"""Room for the letter, and for a chatty judge's sentence around it."""

_EXAMPLES_EN = (
    ("What is the main object in image?", "A. teddy bear B. rabbit C. cat D. dog", "a cute teddy bear", "A"),
    ("What is the main object in image?", "A. teddy bear B. rabbit C. cat D. dog", "Spider", "Z"),
)
_EXAMPLES_CN = (
    ("图中最主要的物体是什么?", "A. 泰迪熊 B. 兔子 C. 猫 D. 狗", "一只可爱的泰迪熊", "A"),
    ("图中最主要的物体是什么?", "A. 泰迪熊 B. 兔子 C. 猫 D. 狗", "蜘蛛", "Z"),
)


@dataclass(frozen=True)
class JudgeQuestion:
    """One answer for the judge.

    Attributes:
        index: the row's index (seeds its random pick).
        question: the question alone, without hint or options.
        options: option letter -> text.
        prediction: the model's answer.
    """

    index: int
    question: str
    options: dict[str, str]
    prediction: str


def judge_prompt(question: str, options: dict[str, str], prediction: str) -> str:
    """VLMEvalKit's matching prompt for one answer: English, or Chinese when the question is."""
    listed = "There are several options: \n" + "".join(f"{letter}. {text}\n" for letter, text in options.items())
    if is_chinese(question):
        intro = (
            "你是一个帮助我匹配答案与单选题中多个选项的 AI 助手。你会被提供：一个问题，多个选项，一个答案。"
            "你的任务是找到与答案意义最相近的选项。如果所有选项的意义都与答案显著不同，则输出 Z。"
            "你应该输出一个单个的大写字母，例如 A, B, C, D（如果它们是有效选项），或 Z。"
        )
        shots = [f"问题: {q}\n选项: {o}\n答案: {a}\n输出: {out}\n" for q, o, a, out in _EXAMPLES_CN]
        # VLMEvalKit's first Chinese example follows "例 1:" without a space or newline
        examples = f"例 1:{shots[0]}例 2: \n{shots[1]}例 3: \n"
        return f"{intro}{examples}问题: {question}?\n选项: {listed}\n答案: {prediction}\n输出: "
    intro = (
        "You are an AI assistant who will help me to match an answer with several options of a single-choice "
        "question. You are provided with a question, several options, and an answer, and you need to find which "
        "option is most similar to the answer. If the meaning of all options are significantly different from "
        "the answer, output Z. Your should output a single uppercase character in A, B, C, D (if they are valid "
        "options), and Z. \n"
    )
    shots = "".join(
        f"Example {n}: \nQuestion: {q}\nOptions: {o}\nAnswer: {a}\nYour output: {out}\n"
        for n, (q, o, a, out) in enumerate(_EXAMPLES_EN, start=1)
    )
    return f"{intro}{shots}Example 3: \nQuestion: {question}?\nOptions: {listed}\nAnswer: {prediction}\nYour output: "


def read_verdict(reply: str, options: dict[str, str]) -> Extraction | None:
    """What a judge's reply says: an option ("judge"), no option ("judge: no option"), or None (ask again)."""
    read = extract_choice(reply, options)
    if read.resolved:
        return Extraction(read.choice, "judge")
    if read.rule == "refused":  # "Z", which VLMEvalKit's matching reads as no option
        return Extraction(None, "judge: no option")
    return None


def random_verdict(question: JudgeQuestion) -> Extraction:
    """VLMEvalKit's last resort: a uniform pick among the options and "Z", seeded by the question index."""
    pick = random.Random(f"{SEED}:{question.index}").choice([*question.options, "Z"])
    return Extraction(None if pick == "Z" else pick, "judge failed: random")


class VerdictCache:
    """The judge's verdicts on disk, one JSON line per request: ``{"key", "choice", "rule"}``.

    Lines are appended and flushed as verdicts arrive, so an interrupted run keeps what it was
    told. A line that holds no verdict (cut short by a crash, or edited by hand) is skipped on
    reading: its question is asked again, and nothing else is lost.

    Args:
        path: the ``.jsonl`` file (created on the first verdict).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.verdicts: dict[str, Extraction] = {}
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        self._cut_line = bool(text) and not text.endswith("\n")  # the next verdict starts a line of its own
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("rule") in KEPT_RULES and isinstance(entry.get("key"), str):
                self.verdicts[entry["key"]] = Extraction(entry.get("choice"), entry["rule"])

    @staticmethod
    def key(body: dict) -> str:
        """The request's identity: model, prompt and decoding, hashed."""
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, body: dict) -> Extraction | None:
        """The verdict kept for this request, if any."""
        return self.verdicts.get(self.key(body))

    def put(self, body: dict, verdict: Extraction) -> None:
        """Keep a verdict (appended at once)."""
        key = self.key(body)
        self.verdicts[key] = verdict
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            entry = {"key": key, "choice": verdict.choice, "rule": verdict.rule}
            file.write("\n" * self._cut_line + json.dumps(entry, ensure_ascii=False) + "\n")
        self._cut_line = False


class Judge:
    """Asks a chat model which option each unresolved answer means.

    Args:
        client: the judge's server.
        model: the judge model's id.
        attempts: replies asked for per answer before the random pick.
        cache: where verdicts are kept between runs (None: nowhere).

    Attributes:
        reused: how many verdicts the last :meth:`resolve` took from ``cache``.
    """

    def __init__(
        self, client: ChatClient, model: str, attempts: int = ATTEMPTS, cache: VerdictCache | None = None
    ) -> None:
        self.client = client
        self.model = model
        self.attempts = attempts
        self.cache = cache
        self.reused = 0

    def cached_in(self, path: Path) -> "Judge":
        """This judge, keeping its verdicts in ``path``."""
        return Judge(self.client, self.model, self.attempts, VerdictCache(path))

    @property
    def name(self) -> str:
        """The judge as the report names it."""
        return f"{self.model} at {self.client.endpoint.root}"

    def resolve(self, questions: list[JudgeQuestion]) -> list[Extraction]:
        """A verdict per question, asking all of them concurrently, in rounds for the ones still open.

        A request that fails after the client's retries (overload, timeouts) counts as a reply naming
        nothing, as VLMEvalKit counts "Failed to obtain answer via API"; a refusal to serve at all
        (bad key, unknown model) stops the run instead of turning every answer into a random pick.

        Raises:
            ApiRequestError: the judge server refused a request with a status that retrying cannot fix.
        """
        bodies = [self._body(question) for question in questions]
        kept = [self.cache.get(body) if self.cache else None for body in bodies]
        verdicts = {i: verdict for i, verdict in enumerate(kept) if verdict is not None}
        self.reused = len(verdicts)
        for _ in range(self.attempts):
            open_positions = [i for i in range(len(questions)) if i not in verdicts]
            if not open_positions:
                break
            replies = self.client.complete_all([bodies[i] for i in open_positions], False)
            for position, reply in zip(open_positions, replies, strict=True):
                if isinstance(reply, ApiRequestError):
                    if not reply.transient:
                        raise ApiRequestError(f"LLM judge: {reply}; check --judge-api-base, --judge-model and the key.")
                    continue
                verdict = read_verdict(reply, questions[position].options)
                if verdict is not None:
                    verdicts[position] = verdict
                    if self.cache is not None:
                        self.cache.put(bodies[position], verdict)
        return [verdicts.get(i) or random_verdict(q) for i, q in enumerate(questions)]

    def _body(self, question: JudgeQuestion) -> dict:
        prompt = judge_prompt(question.question, question.options, question.prediction.strip())
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
