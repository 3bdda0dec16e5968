"""Rebuild this folder's fixture: synthetic ScienceQA problems, LLaVA-layout answers, eval_science_qa.py's decisions.

Run outside the test suite, with LLaVA's ``llava/eval/eval_science_qa.py`` taken from a LLaVA checkout::

    python make_fixture.py --script /tmp/llava/llava/eval/eval_science_qa.py --commit <LLaVA commit>

It writes ``problems.json`` and ``pid_splits.json`` (the layout of ScienceQA's ``data/scienceqa``),
``llava_answers.jsonl`` (the layout ``llava/eval/model_vqa_science.py --single-pred-prompt`` writes:
``question_id`` = pid, ``prompt`` = the question as asked, ``text`` = the answer), then runs the official
script on them and stores what it decided in ``official_decisions.json``; and it runs the script on the
six-choice case it crashes on and stores the error in ``crash_six_choices.json``. The script is run, never
copied. The answers are written by hand to cover every form the script reads or refuses.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the option's letter from the given choices directly."

FROG_DOG = ["frog", "dog"]
STATES = ["West Virginia", "Louisiana", "Arizona", "Oklahoma"]
NORTH = ["Ohio", "Texas", "Utah"]
ROCKS = ["granite", "basalt", "marble", "slate", "sandstone"]
MAGNETS = ["attract", "repel"]
RAMP = "The passage below describes an experiment.\n\nTom rolled a marble down two ramps.\nFigure: a ramp."

# (pid, question, choices, answer index, hint, subject, grade, the model's answer, what the answer tests)
IMAGE_PROBLEMS = [
    ("1", "Which of these states is farthest north?", STATES, 0, "", "social science", "grade2", "A", "bare letter"),
    ("2", "Which is a mammal?", FROG_DOG, 1, "Look at the picture.", "natural science", "grade3", "B", "bare"),
    ("3", "Which state is farthest north?", NORTH, 0, "", "social science", "grade8", "C", "wrong letter"),
    ("4", "Which rock is sedimentary?", ROCKS, 4, "", "natural science", "grade6", "E", "fifth letter"),
    ("5", "Will these magnets attract or repel?", MAGNETS, 1, "", "natural science", "grade4", "E", "not an option"),
    ("6", "Which state is farthest north?", NORTH, 2, "", "social science", "grade7", "D", "not an option"),
    (
        "7",
        "Which of these states is farthest north?",
        STATES,
        0,
        "",
        "social science",
        "grade2",
        "A. West Virginia",
        "",
    ),
    (
        "8",
        "Which is a mammal?",
        FROG_DOG,
        1,
        "",
        "natural science",
        "grade1",
        "B. The animal with fur that feeds its young with milk is the one in the picture on the right side.",
        "long X. answer, letter first",
    ),
    (
        "9",
        "Which rock is sedimentary?",
        ROCKS,
        1,
        "",
        "natural science",
        "grade9",
        "C. it forms from layers of shells and sand pressed together over a very long time in the sea",
        "long X. answer, wrong",
    ),
    ("10", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade2", "B.", "punctuation"),
    ("11", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade2", "(B)", "parentheses"),
    ("12", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade2", "**B**", "markdown bold"),
    ("13", "Will these magnets attract or repel?", MAGNETS, 1, "", "natural science", "grade5", "b", "lower case"),
    ("14", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade10", "Answer: B", "Answer: prefix"),
    ("15", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade11", "The answer is B.", "answer is"),
    ("16", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade12", "The answer is B", "no final char"),
    (
        "17",
        "Which is a mammal?",
        FROG_DOG,
        1,
        "",
        "natural science",
        "grade3",
        "The answer is A. The answer is B.",
        "two answer-is",
    ),
    ("18", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "the answer is B.", "lower-case the"),
    ("19", "Which of these states is farthest north?", STATES, 1, "", "social science", "grade4", "Louisiana", "text"),
    ("20", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "答案是B", "Chinese"),
    ("21", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "B。", "Chinese full stop"),
    ("22", "Which state is farthest north?", NORTH, 0, "", "social science", "grade8", "", "empty"),
    ("23", "Which state is farthest north?", NORTH, 0, "", "social science", "grade8", "   ", "whitespace"),
    ("24", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", " B", "leading space"),
    ("25", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "B\n", "trailing newline"),
    ("26", "Which is a mammal?", FROG_DOG, 0, "", "natural science", "grade3", "A.frog", "no space after stop"),
    ("27", "Which is a mammal?", FROG_DOG, 0, "", "natural science", "grade3", "A. ", "letter, stop, space"),
    ("28", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "The answer is BC", "any char after"),
    (
        "29",
        "Which is a mammal?",
        FROG_DOG,
        1,
        "",
        "natural science",
        "grade3",
        "Dogs have fur and feed their young milk. The answer is B.",
        "reasoning then answer",
    ),
    ("30", "Which state is farthest north?", NORTH, 2, "", "social science", "grade7", "The answer is F.", "F"),
    ("31", "Which state is farthest north?", NORTH, 0, "", "social science", "grade7", "Z", "Z"),
    (
        "32",
        "Which state is farthest north?",
        NORTH,
        0,
        "",
        "social science",
        "grade7",
        "Cannot determine the answer",
        "refusal",
    ),
    ("33", "Which state is farthest north?", NORTH, 0, "", "social science", "grade7", "A, B", "two letters"),
    ("34", "Which state is farthest north?", NORTH, 0, "", "social science", "grade7", "AB", "two letters joined"),
    ("35", "Which state is farthest north?", NORTH, 0, "", "social science", "grade7", "A. B. C.", "letters"),
    ("36", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "The answer is (B).", "(B)"),
    (
        "37",
        "Which is a mammal?",
        FROG_DOG,
        1,
        "",
        "natural science",
        "grade3",
        "The mammal in the picture is the dog.",
        "sentence with option text",
    ),
    (
        "38",
        "Which state is farthest north?",
        NORTH,
        0,
        "",
        "social science",
        "grade7",
        "A. Ohio is farther north than both of the others, so it is the answer, not B or C.",
        "long X. answer naming other letters",
    ),
    ("39", "Which state is farthest north?", NORTH, 2, "", "social science", "grade9", "C. Utah", "X. text"),
    (
        "40",
        "Which rock is sedimentary?",
        ROCKS,
        4,
        "",
        "natural science",
        "grade6",
        "E. sandstone, which forms from layers of sand pressed together",
        "X. text, fifth option",
    ),
    ("41", "Which is a mammal?", FROG_DOG, 0, "", "natural science", "grade3", "The answer is A.The answer is A.", ""),
    ("42", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade3", "选B", "Chinese"),
    ("43", "Which ramp?", ["the steep ramp", "the flat ramp"], 1, RAMP, "natural science", "grade8", "B", "hint"),
    ("44", "Which of these states is farthest north?", STATES, 3, "", "social science", "grade5", "D", "fourth"),
    ("45", "Which is a mammal?", FROG_DOG, 1, "", "language science", "grade2", "A", "wrong bare letter"),
    ("46", "Which is a mammal?", FROG_DOG, 0, "", "language science", "grade2", "B. frog", "wrong X. text"),
    ("47", "Which state is farthest north?", NORTH, 2, "", "social science", "grade9", "The answer is C.\n", ""),
    ("48", "Which state is farthest north?", NORTH, 2, "", "social science", "grade9", "The answer is C\n", ""),
    ("49", "Which word rhymes with cat?", ["hat", "dog"], 0, "Read the words.", "language science", "grade1", "A", ""),
    ("50", "Which word rhymes with cat?", ["dog", "hat"], 1, "", "language science", "grade12", "B", ""),
]
"""Test problems with an image: the scored questions (ScienceQA-IMG)."""

TEXT_ONLY = [
    ("101", "Which word comes first in alphabetical order?", ["cow", "ant"], 1, "", "language science", "grade2", "B"),
    ("102", "What is the capital of Ohio?", ["Columbus", "Austin"], 0, "", "social science", "grade4", "A. Columbus"),
    ("103", "Which tense is used?", ["past", "future"], 0, "Mia walked.", "language science", "grade3", "x"),
    ("104", "Is a rock a solid?", ["yes", "no"], 0, "", "natural science", "grade1", "The answer is A."),
]
"""Test problems without an image: LLaVA's answer file answers them too; vltool ignores them."""

TRAIN = [("201", "Which is a mammal?", FROG_DOG, 1, "", "natural science", "grade2")]
"""A training problem with an image: not scored, not answered."""


def problem(question: str, choices: list[str], answer: int, hint: str, subject: str, grade: str, **more) -> dict:
    """A problems.json entry (the fields ScienceQA has; lecture and solution left empty)."""
    fields = {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": "image.png"}
    fields.update({"task": "closed choice", "grade": grade, "subject": subject, "topic": "", "skill": ""})
    fields.update({"lecture": "", "solution": "", "split": "test"})
    return {**fields, **more}


def released_question(entry: dict) -> str:
    """The human turn of LLaVA-1.5's released ``llava_test_CQM-A.json`` for one problem.

    ``[<image>\\n][Context: hint\\n]question\\nA. choice\\nB. choice ...`` (the released file's entries for
    pids 4 and 5; lmms-eval's ``sqa_doc_to_text`` builds the same text).
    """
    context = f"Context: {entry['hint']}\n" if entry["hint"] else ""
    choices = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(entry["choices"]))
    text = f"{context}{entry['question']}\n{choices}"
    return f"<image>\n{text}" if entry["image"] else text


def asked_prompt(entry: dict) -> str:
    """The ``prompt`` model_vqa_science.py --single-pred-prompt writes: marker moved to the front, instruction added."""
    question = released_question(entry).replace("<image>", "").strip()
    prompt = f"<image>\n{question}" if entry["image"] else question
    return f"{prompt}\n{INSTRUCTION}"


def answer_line(pid: str, entry: dict, text: str) -> dict:
    """One line of LLaVA's answer file."""
    return {
        "question_id": pid,
        "prompt": asked_prompt(entry),
        "text": text,
        "answer_id": f"synthetic-{pid}",
        "model_id": "synthetic-answers",
        "metadata": {},
    }


def build() -> tuple[dict, dict, list[dict]]:
    """problems.json, pid_splits.json and the answer lines."""
    problems, lines = {}, []
    for pid, question, choices, answer, hint, subject, grade, text, _ in IMAGE_PROBLEMS:
        problems[pid] = problem(question, choices, answer, hint, subject, grade)
        lines.append(answer_line(pid, problems[pid], text))
    for pid, question, choices, answer, hint, subject, grade, text in TEXT_ONLY:
        problems[pid] = problem(question, choices, answer, hint, subject, grade, image=None)
        lines.append(answer_line(pid, problems[pid], text))
    for pid, question, choices, answer, hint, subject, grade in TRAIN:
        problems[pid] = problem(question, choices, answer, hint, subject, grade, split="train")
    splits = {split: [pid for pid, p in problems.items() if p["split"] == split] for split in ("train", "val", "test")}
    return problems, splits, lines


def write_inputs(folder: Path, problems: dict, splits: dict, lines: list[dict]) -> None:
    (folder / "problems.json").write_text(json.dumps(problems, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "pid_splits.json").write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")
    answers = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    (folder / "llava_answers.jsonl").write_text(answers, encoding="utf-8")


def run_script(script: Path, folder: Path, work: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(script), "--base-dir", str(folder)]
    command += ["--result-file", str(folder / "llava_answers.jsonl")]
    command += ["--output-file", str(work / "output.json"), "--output-result", str(work / "result.json")]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def decisions(script: Path, commit: str) -> dict:
    """Run the script on this folder's files and collect its per-item decisions and printed score."""
    with tempfile.TemporaryDirectory() as work:
        result = run_script(script, HERE, Path(work))
        if result.returncode:
            raise SystemExit(f"eval_science_qa.py failed:\n{result.stderr}")
        output = json.loads((Path(work) / "output.json").read_text())
        summary = json.loads((Path(work) / "result.json").read_text())
    items = {}
    for verdict, rows in (("correct", output["correct"]), ("incorrect", output["incorrect"])):
        for row in rows:
            items[row["question_id"]] = {
                "pred": row["pred"],
                "parsed_ans": row["parsed_ans"],
                "ground_truth": row["ground_truth"],
                "correct": verdict == "correct",
                "is_multimodal": row["is_multimodal"],
            }
    image_items = [item for item in items.values() if item["is_multimodal"]]
    return {
        "script": "llava/eval/eval_science_qa.py",
        "repository": "haotian-liu/LLaVA",
        "commit": commit,
        "printed": result.stdout.strip(),
        "accuracy": summary["acc"],
        "img_correct": sum(item["correct"] for item in image_items),
        "img_total": len(image_items),
        "items": dict(sorted(items.items(), key=lambda pair: int(pair[0]))),
    }


def six_choice_crash(script: Path, commit: str) -> dict:
    """A problem with six choices whose answer is the sixth: the script's A-E letters cannot name it and it fails."""
    choices = ["rock", "ice", "wood", "iron", "salt", "steam"]
    entry = problem("Which is a gas?", choices, 5, "", "natural science", "grade4")
    problems, lines = {"301": entry}, [answer_line("301", entry, "F")]
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        write_inputs(folder, problems, {"train": [], "val": [], "test": ["301"]}, lines)
        result = run_script(script, folder, folder)
    return {
        "script": "llava/eval/eval_science_qa.py",
        "repository": "haotian-liu/LLaVA",
        "commit": commit,
        "problems": problems,
        "answers": lines,
        "returncode": result.returncode,
        "error": result.stderr.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="llava/eval/eval_science_qa.py of a LLaVA checkout")
    parser.add_argument("--commit", required=True, help="the LLaVA commit the script comes from")
    args = parser.parse_args()
    write_inputs(HERE, *build())
    expected = decisions(args.script, args.commit)
    (HERE / "official_decisions.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    crash = six_choice_crash(args.script, args.commit)
    (HERE / "crash_six_choices.json").write_text(json.dumps(crash, indent=1, ensure_ascii=False) + "\n")
    print(expected["printed"], f"\nsix choices: {crash['error']}")


if __name__ == "__main__":
    main()
