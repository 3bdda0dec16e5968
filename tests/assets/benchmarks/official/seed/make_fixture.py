"""Rebuild this folder's fixture: a synthetic SEED-Bench.json, LLaVA-layout answers, the official script's decisions.

Run outside the test suite, with LLaVA's ``scripts/convert_seed_for_submission.py`` taken from a LLaVA checkout::

    python make_fixture.py --script /tmp/llava/scripts/convert_seed_for_submission.py --commit <LLaVA commit>

It writes ``SEED-Bench.json`` (SEED-Bench v1's layout: image questions, dimensions 1-9, and a few video
questions, dimensions 10-12) and ``llava_answers.jsonl`` (the layout ``llava/eval/model_vqa_loader.py``
writes from ``llava-seed-bench.jsonl``: ``question_id`` an integer for image questions and the "v..." string
for video ones, ``prompt`` the question with its options and instruction, ``text`` the answer). Then it runs
the official script, which prints only per-dimension and overall accuracies, three times:

1. on the files as they are: the printed accuracies (``official_decisions.json``: ``printed``);
2. on a probe copy where every answered image question sits in a dimension of its own with one companion
   question answered right, so each dimension prints 100% (the answer is right) or 50% (wrong): the
   per-item decisions (``items``), read from the script's own output;
3. on the two inputs it crashes on (``crashes.json``): a dimension with no right answer, and a file without
   video questions.

The script is run, never copied. The answers are written by hand to cover the forms an answer takes.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = "Answer with the option's letter from the given choices directly."
DIMENSIONS = {
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Instance Location": 4,
    "Instances Counting": 5,
    "Spatial Relation": 6,
    "Instance Interaction": 7,
    "Visual Reasoning": 8,
    "Text Understanding": 9,
    "Action Recognition": 10,
    "Action Prediction": 11,
    "Procedure Understanding": 12,
}
FRUIT = ("What fruit is on the table?", ["red apple", "green pear", "yellow banana", "purple grape"])
TOWELS = ("How many towels are in the image?", ["One", "Two", "Three", "Four"])
ACTION = ("What is the action in the video?", ["dropping it", "catching it", "lifting it", "poking it"])

# (question_id, dimension, answer, the model's answer, what the answer tests)
IMAGE_QUESTIONS = [
    ("101", 1, "A", "A", "bare letter"),
    ("102", 2, "B", "B", "bare letter"),
    ("103", 3, "C", "C", "bare letter"),
    ("104", 4, "D", "D", "bare letter"),
    ("105", 5, "A", "A", "bare letter"),
    ("106", 6, "B", "B", "bare letter"),
    ("107", 7, "C", "C", "bare letter"),
    ("108", 8, "D", "D", "bare letter"),
    ("109", 9, "A", "A", "bare letter"),
    ("110", 1, "A", "B", "wrong letter"),
    ("111", 2, "A", "a", "lower case"),
    ("112", 3, "A", "A.", "full stop"),
    ("113", 4, "A", "(A)", "parentheses"),
    ("114", 5, "A", "**A**", "markdown bold"),
    ("115", 6, "A", "Answer: A", "Answer: prefix"),
    ("116", 7, "A", "The answer is A.", "answer is"),
    ("117", 8, "A", "The answer is A", "answer is, no stop"),
    ("118", 9, "A", "A. red apple", "X. text"),
    ("119", 1, "A", "A. The apple on the left of the table is red and shiny, so it is the red apple", "long X. text"),
    ("120", 2, "A", "red apple", "option text"),
    ("121", 3, "A", "答案是A", "Chinese"),
    ("122", 4, "A", "A。", "Chinese full stop"),
    ("123", 5, "A", "选A", "Chinese"),
    ("124", 6, "A", "", "empty"),
    ("125", 7, "A", "   ", "whitespace"),
    ("126", 8, "A", " A", "leading space"),
    ("127", 9, "A", "A ", "trailing space"),
    ("128", 1, "A", "A\n", "trailing newline"),
    ("129", 2, "A", "Z", "Z"),
    ("130", 3, "A", "Cannot determine the answer", "refusal"),
    ("131", 4, "A", "A, B", "two letters"),
    ("132", 5, "A", "AB", "two letters joined"),
    ("133", 6, "A", "I think it is A.", "sentence ending in the letter"),
    ("134", 7, "A", "It is a red apple.", "sentence with option text"),
    ("135", 8, "A", "E", "not an option"),
    ("136", 9, "C", "c", "lower case"),
    ("137", 1, "D", "D.", "full stop"),
    ("138", 2, "C", "(C) yellow banana", "(X) text"),
    ("139", 3, "B", "Option B", "Option X"),
    ("140", 4, "B", "B) green pear", "X) text"),
    ("141", 5, "D", "The correct answer is D.", "correct answer is"),
    ("142", 6, "B", "B", "bare letter"),
    ("143", 7, "D", "A", "wrong letter"),
    ("144", 8, "B", "Two", "option text (counting)"),
]
"""Image questions (data_id ``<question_id>_1.jpg``): the scored ones."""

VIDEO_QUESTIONS = [
    ("v1738", 10, "B", "94328.webm", "B"),
    ("v1962", 11, "B", "P03/P03_24.MP4", "B"),
    ("v4397", 12, "C", "P06/cam01/P06_cereals.avi", "C"),
]
"""Video questions (answered by LLaVA from their middle frame); vltool ignores their answers."""


def question(question_id: str, dimension: int, answer: str, data_id: str, data_type: str = "image") -> dict:
    """A SEED-Bench.json question: videos ask the action question, 144 the counting one, the others the fruit one."""
    text, choices = ACTION if data_type == "video" else TOWELS if question_id == "144" else FRUIT
    entry = {"answer": answer, **{f"choice_{letter}": choice for letter, choice in zip("abcd", choices, strict=True)}}
    entry.update({"data_id": data_id, "data_type": data_type, "question": text, "question_id": question_id})
    return {**entry, "question_type_id": dimension}


def answer_line(entry: dict, text: str) -> dict:
    """One line of LLaVA's answer file (``model_vqa_loader.py`` on ``llava-seed-bench.jsonl``)."""
    options = "\n".join(f"{letter}. {entry[f'choice_{letter.lower()}']}" for letter in "ABCD")
    question_id = entry["question_id"]
    return {
        "question_id": int(question_id) if question_id.isdigit() else question_id,
        "prompt": f"{entry['question']}\n{options}\n{INSTRUCTION}",
        "text": text,
        "answer_id": f"synthetic-{question_id}",
        "model_id": "synthetic-answers",
        "metadata": {},
    }


def build() -> tuple[dict, list[dict]]:
    """SEED-Bench.json and the answer lines."""
    questions, lines = [], []
    for question_id, dimension, answer, text, _ in IMAGE_QUESTIONS:
        questions.append(question(question_id, dimension, answer, f"{question_id}_1.jpg"))
        lines.append(answer_line(questions[-1], text))
    for question_id, dimension, answer, data_id, text in VIDEO_QUESTIONS:
        questions.append(question(question_id, dimension, answer, data_id, "video"))
        lines.append(answer_line(questions[-1], text))
    return {"questions": questions, "question_type": DIMENSIONS}, lines


def run_script(script: Path, data: dict, lines: list[dict]) -> subprocess.CompletedProcess:
    """Run the official script on ``data`` and ``lines`` in a scratch folder."""
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        (folder / "SEED-Bench.json").write_text(json.dumps(data))
        (folder / "answers.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        command = [sys.executable, str(script), "--annotation-file", str(folder / "SEED-Bench.json")]
        command += ["--result-file", str(folder / "answers.jsonl")]
        command += ["--result-upload-file", str(folder / "upload.jsonl")]
        return subprocess.run(command, capture_output=True, text=True, check=False)


def printed_accuracies(stdout: str) -> dict[str, float]:
    """``name: 12.34%`` lines as name -> accuracy."""
    return {name: float(value) for name, value in re.findall(r"^(.+): ([\d.]+)%$", stdout, flags=re.MULTILINE)}


def probe_items(script: Path, data: dict, lines: list[dict]) -> dict[str, bool]:
    """Each image question's decision, from a run where it shares a dimension only with a right companion."""
    questions, probe_lines, names = [], [], {}
    answers = {str(line["question_id"]): line for line in lines}
    for number, entry in enumerate(q for q in data["questions"] if q["data_type"] == "image"):
        dimension = 100 + number
        names[f"probe {entry['question_id']}"] = dimension
        companion = {**entry, "question_id": str(900000 + number), "answer": "A", "question_type_id": dimension}
        questions += [{**entry, "question_type_id": dimension}, companion]
        probe_lines += [answers[entry["question_id"]], answer_line(companion, "A")]
    videos = [q for q in data["questions"] if q["data_type"] == "video"]
    probe_lines += [answers[q["question_id"]] for q in videos]
    names.update({name: number for name, number in data["question_type"].items() if number >= 10})
    result = run_script(script, {"questions": questions + videos, "question_type": names}, probe_lines)
    if result.returncode:
        raise SystemExit(f"probe run failed:\n{result.stderr}")
    accuracies = printed_accuracies(result.stdout)
    verdicts = {100.0: True, 50.0: False}
    return {name.removeprefix("probe "): verdicts[accuracies[name]] for name in names if name.startswith("probe ")}


def crash(script: Path, commit: str, case: str, data: dict, lines: list[dict]) -> dict:
    """Run the script on an input it fails on; keep what it printed before failing and its error."""
    result = run_script(script, data, lines)
    return {
        "case": case,
        "script": "scripts/convert_seed_for_submission.py",
        "repository": "haotian-liu/LLaVA",
        "commit": commit,
        "data": data,
        "answers": lines,
        "returncode": result.returncode,
        "printed": result.stdout.strip(),
        "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "",
    }


def crashes(script: Path, commit: str) -> list[dict]:
    """A dimension whose answers are all wrong, and a file without video questions."""
    video = question("v1738", 10, "B", "94328.webm", "video")
    wrong = [question("301", 1, "A", "301_1.jpg"), question("302", 1, "B", "302_1.jpg")]
    right = question("303", 2, "C", "303_1.jpg")
    all_wrong = {"questions": [*wrong, right, video], "question_type": DIMENSIONS}
    lines = [answer_line(wrong[0], "B"), answer_line(wrong[1], "B."), answer_line(right, "C"), answer_line(video, "B")]
    image_only = {"questions": [*wrong, right], "question_type": DIMENSIONS}
    image_lines = [answer_line(wrong[0], "A"), answer_line(wrong[1], "A"), answer_line(right, "C")]
    return [
        crash(script, commit, "a dimension with no right answer", all_wrong, lines),
        crash(script, commit, "no video question", image_only, image_lines),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="scripts/convert_seed_for_submission.py")
    parser.add_argument("--commit", required=True, help="the LLaVA commit the script comes from")
    args = parser.parse_args()
    data, lines = build()
    (HERE / "SEED-Bench.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    answers = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    (HERE / "llava_answers.jsonl").write_text(answers, encoding="utf-8")
    result = run_script(args.script, data, lines)
    if result.returncode:
        raise SystemExit(f"convert_seed_for_submission.py failed:\n{result.stderr}")
    expected = {
        "script": "scripts/convert_seed_for_submission.py",
        "repository": "haotian-liu/LLaVA",
        "commit": args.commit,
        "printed": result.stdout.strip(),
        "accuracies": printed_accuracies(result.stdout),
        "items": probe_items(args.script, data, lines),
    }
    (HERE / "official_decisions.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    failures = crashes(args.script, args.commit)
    (HERE / "crashes.json").write_text(json.dumps(failures, indent=1, ensure_ascii=False) + "\n")
    print(expected["printed"], *(f"{case['case']}: {case['error']}" for case in failures), sep="\n")


if __name__ == "__main__":
    main()
