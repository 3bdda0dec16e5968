"""Scoring MMBench predictions as VLMEvalKit does: extracted letters, CircularEval, its report layout."""

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vltool.eval.circular import OFFSET, group_hits, group_index
from vltool.eval.extraction import Extraction, extract_choice
from vltool.eval.mmbench_data import options_of

if TYPE_CHECKING:  # the judge's HTTP client loads only for runs that have one
    from vltool.eval.judge import Judge

L2_ABBREVIATIONS = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}
"""The short names VLMEvalKit's MMBench report gives the l2-categories."""


@dataclass
class ScoredRows:
    """Every answered row with what was read from its answer.

    Attributes:
        rows: the questions (all passes) with ``prediction``, ``choice`` (the extracted letter,
            empty when none), ``rule`` (how it was read) and, with answers, ``hit`` (0/1).
        circular: whether questions were scored over all their passes.
    """

    rows: pd.DataFrame
    circular: bool

    @property
    def originals(self) -> pd.DataFrame:
        """Pass 0 of every question, with ``hit`` (the circular result when circular) and ``vanilla_hit``."""
        main = self.rows[self.rows["index"] < OFFSET].copy()
        main["vanilla_hit"] = main["hit"]
        if self.circular:
            by_group = group_hits(self.rows["index"], self.rows["hit"])
            main["hit"] = [int(by_group[group_index(i)]) for i in main["index"]]
        return main

    def rule_counts(self) -> Counter[str]:
        """How many answers each extraction rule decided."""
        return Counter(self.rows["rule"])


def score_rows(
    rows: pd.DataFrame, predictions: dict[int, str], has_answers: bool, circular: bool, judge: "Judge | None" = None
) -> ScoredRows:
    """Read the option each prediction picks and, with answers, whether it is right.

    Args:
        rows: the questions (all passes), as :func:`vltool.eval.mmbench_data.read_mmbench_tsv` gives them.
        predictions: index -> answer text, for every row.
        has_answers: whether ``rows`` has an ``answer`` per question.
        circular: whether to score questions over their passes.
        judge: an LLM judge for the answers exact matching leaves unresolved (None: they stay unresolved).
    """
    scored = rows.copy()
    scored["prediction"] = [predictions[int(index)] for index in scored["index"]]
    extractions = [
        extract_choice(text, options_of(row))
        for text, (_, row) in zip(scored["prediction"], scored.iterrows(), strict=True)
    ]
    if judge is not None:
        extractions = _judged(scored, extractions, judge)
    scored["choice"] = [e.choice or "" for e in extractions]
    scored["rule"] = [e.rule for e in extractions]
    if has_answers:
        scored["hit"] = (scored["choice"] == scored["answer"].str.strip()).astype(int)
    return ScoredRows(scored, circular)


def _judged(scored: pd.DataFrame, extractions: list[Extraction], judge: "Judge") -> list[Extraction]:
    """The extractions with every unresolved one replaced by the judge's verdict."""
    from vltool.eval.judge import JudgeQuestion

    unresolved = [i for i, extraction in enumerate(extractions) if extraction.rule == "unresolved"]
    questions = []
    for i in unresolved:
        row = scored.iloc[i]
        questions.append(JudgeQuestion(int(row["index"]), str(row["question"]), options_of(row), row["prediction"]))
    verdicts = judge.resolve(questions) if questions else []
    judged = list(extractions)
    for i, verdict in zip(unresolved, verdicts, strict=True):
        judged[i] = verdict
    return judged


def accuracy_report(originals: pd.DataFrame, hit_column: str = "hit") -> pd.DataFrame:
    """Accuracy in VLMEvalKit's ``_acc.csv`` layout.

    One row per split; columns ``split``, ``Overall``, the l2-categories (abbreviated as VLMEvalKit
    does), then the categories, each sorted; values are fractions.

    Args:
        originals: one row per question with ``hit_column`` (0/1) and optional ``split``,
            ``l2-category`` and ``category`` columns.
        hit_column: which column holds the result.
    """
    splits = sorted(set(originals["split"])) if "split" in originals else ["none"]
    split_of = originals["split"] if "split" in originals else pd.Series("none", index=originals.index)
    report: dict[str, list[object]] = {"split": list(splits)}
    report["Overall"] = [_mean(originals.loc[split_of == s, hit_column]) for s in splits]
    for group in ("l2-category", "category"):
        if group not in originals:
            continue
        for ability in sorted(set(originals[group])):
            subset = originals[originals[group] == ability]
            report[L2_ABBREVIATIONS.get(ability, ability)] = [
                _mean(subset.loc[split_of[subset.index] == s, hit_column]) for s in splits
            ]
    return pd.DataFrame(report)


def _mean(values: pd.Series) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def display_table(scored: ScoredRows) -> pd.DataFrame:
    """Rows Overall, each l2-category, each category; columns per split: accuracy in percent and questions.

    With CircularEval the columns are ``circular`` and ``vanilla`` (pass 0 alone); otherwise ``accuracy``.
    """
    originals = scored.originals
    columns = {"circular": "hit", "vanilla": "vanilla_hit"} if scored.circular else {"accuracy": "hit"}
    reports = {name: accuracy_report(originals, hit).set_index("split").T * 100 for name, hit in columns.items()}
    names = next(iter(reports.values())).index
    sizes = _group_sizes(originals, names)
    table = pd.DataFrame(index=names)
    for split in sizes.columns:
        prefix = "" if len(sizes.columns) == 1 else f"{split} "
        for name, report in reports.items():
            table[prefix + name] = report[split]
        table[prefix + "questions"] = sizes[split]
    return table


def _group_sizes(originals: pd.DataFrame, names: pd.Index) -> pd.DataFrame:
    """Questions per report row (Overall, abbreviated l2-categories, categories) and split."""
    split_of = originals["split"] if "split" in originals else pd.Series("none", index=originals.index)
    sizes = {}
    for split in sorted(set(split_of)):
        subset = originals[split_of == split]
        counts = {"Overall": len(subset)}
        for group in ("l2-category", "category"):
            if group in subset:
                for ability, size in subset[group].value_counts().items():
                    counts[L2_ABBREVIATIONS.get(ability, ability)] = int(size)
        sizes[split] = [counts.get(name, 0) for name in names]
    return pd.DataFrame(sizes, index=names)
