"""Rebuild the public ladder tables in this folder from their sources (README.md says which).

    python benchmarks/ladders/extract.py --pythia-git PATH --obsscaling-git PATH2 --scaling-git PATH3

PATH is a git directory of github.com/EleutherAI/pythia, PATH2 one of github.com/ryoungj/ObsScaling,
PATH3 one of github.com/mlfoundations/scaling (any clones; the commits used are in the README).
Chinchilla comes from tests/data; Cerebras-GPT's rows are transcribed below from its model card,
Qwen2.5's from its technical report's base-model tables; Qwen1.5, Qwen2 and BLOOM are read from
ObsScaling's result files, the three OpenLM ladders (RedPajama, C4, RefinedWeb) from
mlfoundations/scaling's. Every table is written as a
results table `sweep report --from FILE` reads, with a `chance` column: the accuracy of guessing
(1 / options for multiple choice, 0 for generated answers), empty where unknown or mixed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
ROOT = HERE.parents[1]

# lm-evaluation-harness tasks kept from the Pythia repo's result files: (task, metric) pairs.
LM_EVAL = [
    ("arc_easy", "acc"),
    ("arc_challenge", "acc"),
    ("piqa", "acc"),
    ("sciq", "acc"),
    ("winogrande", "acc"),
    ("lambada_openai", "acc"),
    ("lambada_openai", "ppl"),
    ("logiqa", "acc"),
    ("wsc", "acc"),
]
PYTHIA = {"70m": 70e6, "160m": 160e6, "410m": 410e6, "1b": 1.0e9, "1.4b": 1.4e9, "2.8b": 2.8e9,
          "6.9b": 6.9e9, "12b": 12e9}  # fmt: skip
OPT = {"125m": 125e6, "350m": 350e6, "1.3b": 1.3e9, "2.7b": 2.7e9, "6.7b": 6.7e9, "13b": 13e9,
       "30b": 30e9, "66b": 66e9}  # fmt: skip

# Cerebras-GPT model card (0-shot and 5-shot tables): params, then the Pile test cross-entropy
# (0-shot table only) and HellaSwag, PIQA, WinoGrande, Lambada, ARC-e, ARC-c, OpenBookQA.
CEREBRAS_TASKS = ["hellaswag", "piqa", "winogrande", "lambada", "arc_easy", "arc_challenge", "openbookqa"]
CEREBRAS_PARAMS = {"111M": 111e6, "256M": 256e6, "590M": 590e6, "1.3B": 1.316e9, "2.7B": 2.652e9,
                   "6.7B": 6.658e9, "13B": 12.853e9}  # fmt: skip
CEREBRAS_0SHOT = """
111M 2.566 0.268 0.594 0.488 0.194 0.380 0.166 0.118
256M 2.299 0.274 0.613 0.511 0.293 0.410 0.170 0.158
590M 2.184 0.291 0.627 0.498 0.366 0.464 0.190 0.158
1.3B 1.996 0.325 0.664 0.521 0.462 0.508 0.224 0.166
2.7B 1.834 0.386 0.701 0.559 0.567 0.571 0.246 0.206
6.7B 1.704 0.447 0.739 0.602 0.636 0.643 0.282 0.238
13B  1.575 0.513 0.766 0.646 0.696 0.714 0.367 0.286
"""
CEREBRAS_5SHOT = """
111M 0.267 0.588 0.475 0.158 0.356 0.166 0.136
256M 0.278 0.606 0.522 0.225 0.422 0.183 0.164
590M 0.291 0.634 0.479 0.281 0.475 0.206 0.152
1.3B 0.326 0.668 0.536 0.395 0.529 0.241 0.174
2.7B 0.382 0.697 0.543 0.487 0.590 0.267 0.224
6.7B 0.444 0.736 0.590 0.591 0.667 0.314 0.270
13B  0.514 0.768 0.674 0.655 0.743 0.398 0.318
"""
# Qwen2.5 technical report (arXiv 2412.15115), base models: Table 5 (0.5B, 1.5B, 3B), Table 4
# (7B), Table 3 (14B, 32B), Table 2 (72B), in percent. Per row: task, shots, metric, chance,
# then the 7 sizes. Chance: 1/options for multiple choice, 0 for generated answers, "-" unknown.
QWEN_PARAMS = [0.5e9, 1.5e9, 3e9, 7e9, 14e9, 32e9, 72e9]  # nominal sizes, as for Pythia and OPT
QWEN25 = """
mmlu 5 acc 0.25 55.9 60.9 65.6 74.2 79.7 83.3 86.1
mmlu_pro 5 acc 0.1 21.6 28.5 34.6 45.0 51.2 55.1 58.1
mmlu_redux 5 acc 0.25 51.8 58.5 63.7 71.1 76.6 82.0 82.8
bbh 3 acc - 36.5 45.1 56.3 70.4 78.2 84.5 86.3
arc_challenge 25 acc 0.25 43.7 54.7 56.5 63.7 67.3 70.4 70.9
truthfulqa 0 acc - 40.2 46.6 48.9 56.4 58.4 57.8 55.3
winogrande 5 acc 0.5 56.3 65.0 71.1 75.9 81.0 82.0 83.9
hellaswag 10 acc 0.25 52.1 67.9 74.6 80.2 84.3 85.2 89.2
gpqa 5 acc 0.25 24.8 24.2 26.3 36.4 32.8 48.0 43.9
theoremqa 5 acc 0 16.0 22.1 27.4 36.0 43.0 44.1 48.5
math 4 acc 0 21.6 35.0 42.6 49.8 55.6 57.7 62.1
mmlu_stem 5 acc 0.25 39.8 54.8 62.5 72.3 76.4 80.9 81.2
gsm8k 4 acc 0 41.6 68.5 79.1 85.4 90.2 92.9 91.5
humaneval 0 pass@1 0 30.5 37.2 42.1 57.9 56.7 58.5 59.1
humaneval_plus 0 pass@1 0 29.9 32.9 36.0 50.6 51.2 52.4 52.4
mbpp 0 pass@1 0 46.9 60.2 57.1 74.9 76.7 84.5 84.7
mbpp_plus 0 pass@1 0 33.8 49.6 49.4 62.9 63.2 67.2 66.9
multipl_e 0 pass@1 0 18.9 33.1 41.2 50.3 53.5 59.4 61.0
multi_exam mixed acc - 30.8 47.9 54.6 59.4 70.6 75.4 78.5
multi_understanding mixed acc - 50.7 65.1 76.6 79.3 85.9 88.4 89.2
multi_mathematics 8 acc 0 13.5 37.5 48.9 57.8 68.5 73.7 82.4
multi_translation 5 bleu 0 15.3 25.0 29.3 32.4 36.2 37.3 40.4
"""
# Base-model ladders in ObsScaling's result files (github.com/ryoungj/ObsScaling, eval_results/): per
# ladder, each model's id in those files and its params = the nominal size, which is also the files'
# "Model Size (B)" (checked). Families kept: a ladder where 1/10 of the largest size leaves at least
# 3 sizes and the rule below at least 6 series; no mixture-of-experts model (Qwen2-57B-A14B left out).
OBSSCALING = {
    "qwen1.5": {f"Qwen/Qwen1.5-{s}": n for s, n in [("0.5B", 0.5e9), ("1.8B", 1.8e9), ("4B", 4e9),
                ("7B", 7e9), ("14B", 14e9), ("32B", 32e9), ("72B", 72e9), ("110B", 110e9)]},
    "qwen2": {f"Qwen/Qwen2-{s}": n for s, n in [("0.5B", 0.5e9), ("1.5B", 1.5e9), ("7B", 7e9),
              ("72B", 72e9)]},
    "bloom": {"bigscience/bloom-560m": 0.56e9, "bigscience/bloom-1b1": 1.1e9, "bigscience/bloom-3b": 3e9,
              "bigscience/bloom-7b1": 7.1e9, "bigscience/bloom": 176e9},
}  # fmt: skip
# The rule: every score column of these three files with a value for all of a ladder's sizes is a series.
# Per column: task, mode, metric, chance (None: unknown or mixed). Shots of the Open LLM Leaderboard
# columns are its documented protocol (v1 and v2); `_2` in the emergent-task names is read as 2-shot.
OBSSCALING_FILES = {
    "base_llm_benchmark_eval": {
        "MMLU": ("mmlu", "5-shot", "acc", 0.25),
        "ARC-C": ("arc_challenge", "25-shot", "acc_norm", 0.25),
        "HellaSwag": ("hellaswag", "10-shot", "acc_norm", 0.25),
        "Winograd": ("winogrande", "5-shot", "acc", 0.5),
        "TruthfulQA": ("truthfulqa", "0-shot", "mc2", None),
        "GSM8K": ("gsm8k", "5-shot", "acc", 0.0),
        "XWinograd": ("xwinograd", "harness-default", "acc", 0.5),
        "HumanEval": ("humaneval", "0-shot", "pass@1", 0.0),
    },
    "base_llm_leaderboard_v2_eval": {
        "leaderboard_bbh": ("bbh", "3-shot", "acc_norm", None),
        "leaderboard_gpqa": ("gpqa", "0-shot", "acc_norm", 0.25),
        "leaderboard_ifeval": ("ifeval", "0-shot", "strict_acc", 0.0),
        "leaderboard_math_hard": ("math_hard", "4-shot", "exact_match", 0.0),
        "leaderboard_mmlu_pro": ("mmlu_pro", "5-shot", "acc", 0.1),
        "leaderboard_musr": ("musr", "0-shot", "acc_norm", None),
    },
    "base_llm_emergent_capability_eval": {
        "parsinlu_qa_2_acc": ("parsinlu_qa", "2-shot", "acc", None),
        "word_unscrambling_2_exact_match": ("word_unscrambling", "2-shot", "exact_match", 0.0),
        "ipa_transliterate_2_exact_match": ("ipa_transliterate", "2-shot", "exact_match", 0.0),
        "ipa_transliterate_2_bleu": ("ipa_transliterate", "2-shot", "bleu", 0.0),
        "arithmetic_3ds_2_acc": ("arithmetic_3ds", "2-shot", "acc", 0.0),
        "arithmetic_3da_2_acc": ("arithmetic_3da", "2-shot", "acc", 0.0),
        "arithmetic_2dm_2_acc": ("arithmetic_2dm", "2-shot", "acc", 0.0),
        "arithmetic_2da_2_acc": ("arithmetic_2da", "2-shot", "acc", 0.0),
    },
}
# OpenLM models trained at 20 tokens per parameter (`chinchilla_multiplier` 1.0) in
# github.com/mlfoundations/scaling (Gadre et al. 2024, arXiv 2403.08540): per rung, the config in the file
# names exp_data/models/<data>-<config>-1.0.json and exp_data/evals/evaluation_<data>-<config>-1.0_heavy.json.
OPENLM_CONFIGS = ["d=96_l=8_h=4", "d=512_l=8_h=4", "d=576_l=24_h=8", "d=1024_l=24_h=8", "open_lm_1b",
                  "open_lm_7b"]  # fmt: skip
# The three training sets of that repository, each a ladder of the six configs: ladder name -> <data>.
OPENLM_DATA = {"openlm-rpj": "rpj", "openlm-c4": "c4_original", "openlm-rw": "rw_original"}
# Guessing accuracy of the lm-evaluation-harness tasks (Pythia, OPT) and Cerebras-GPT's tasks.
CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "sciq": 0.25, "winogrande": 0.5,
          "lambada_openai": 0.0, "lambada": 0.0, "logiqa": 0.25, "wsc": 0.5, "hellaswag": 0.25,
          "openbookqa": 0.25, "mmlu": 0.25}  # fmt: skip
# Chinchilla's IsoFLOP budgets (Hoffmann et al. 2022, Figure 3): each point is assigned to the nearest.
CHINCHILLA_BUDGETS = [6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21]


def _git(git_dir: Path, path: str) -> bytes:
    out = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], capture_output=True)
    out.check_returncode()
    return out.stdout


def _show(git_dir: Path, path: str) -> dict:
    return json.loads(_git(git_dir, path))["results"]


def _lm_eval_rows(results: dict, model: str, params: float, mode: str) -> list[dict]:
    rows = []
    for task, metric in LM_EVAL:
        if task in results and metric in results[task]:
            r = results[task]
            rows.append(
                {
                    "model": model,
                    "params": params,
                    "task": task,
                    "mode": mode,
                    "metric": metric,
                    "value": r[metric],
                    "se": r.get(f"{metric}_stderr"),
                    "higher_is_better": metric != "ppl",
                    "bounded": metric == "acc",
                }  # fmt: skip
            )
    return rows


def pythia(git_dir: Path, deduped: bool) -> pd.DataFrame:
    rows = []
    for size, n in PYTHIA.items():
        # The standard suite's 1B has results only for its bf16 retraining (`pythia-1b-bf16`).
        name = f"{size}-deduped" if deduped else ("1b-bf16" if size == "1b" else size)
        path = f"evals/pythia-v1/pythia-{name}/zero-shot/{name}_step143000.json"
        rows += _lm_eval_rows(_show(git_dir, path), f"pythia-{name}", n, "zero-shot")
    return pd.DataFrame(rows)


def pythia_5shot(git_dir: Path) -> pd.DataFrame:
    """The standard suite's five-shot results at the final checkpoint: the zero-shot table's tasks,
    and MMLU as the unweighted mean of the 57 hendrycksTest subjects' `acc` (se: the root of their
    summed squared standard errors over 57, the subjects taken as independent)."""
    rows = []
    for size, n in PYTHIA.items():
        name = "1b-bf16" if size == "1b" else size  # the 1B's file is named `1b-5shot_...`
        path = f"evals/pythia-v1/pythia-{name}/five-shot/{size}-5shot_step143000.json"
        doc = json.loads(_git(git_dir, path))
        assert doc["config"]["num_fewshot"] == 5, name
        results = doc["results"]
        rows += _lm_eval_rows(results, f"pythia-{name}", n, "five-shot")
        subjects = [r for task, r in results.items() if task.startswith("hendrycksTest-")]
        assert len(subjects) == 57, (name, len(subjects))
        se = math.sqrt(sum(r["acc_stderr"] ** 2 for r in subjects)) / len(subjects)
        rows.append({"model": f"pythia-{name}", "params": n, "task": "mmlu", "mode": "five-shot",
                     "metric": "acc", "value": sum(r["acc"] for r in subjects) / len(subjects), "se": se,
                     "higher_is_better": True, "bounded": True})  # fmt: skip
    return pd.DataFrame(rows)


def opt(git_dir: Path) -> pd.DataFrame:
    rows = []
    for size, n in OPT.items():
        rows += _lm_eval_rows(_show(git_dir, f"evals/opt/opt-{size}.json"), f"opt-{size}", n, "zero-shot")
    return pd.DataFrame(rows)


def cerebras() -> pd.DataFrame:
    rows = []
    for text, mode in ((CEREBRAS_0SHOT, "zero-shot"), (CEREBRAS_5SHOT, "five-shot")):
        for line in text.strip().splitlines():
            name, *vals = line.split()
            n = CEREBRAS_PARAMS[name]
            if mode == "zero-shot":
                rows.append({"model": f"cerebras-gpt-{name}", "params": n, "task": "pile_test", "mode": mode,
                             "metric": "xent", "value": float(vals.pop(0)), "higher_is_better": False,
                             "bounded": False})  # fmt: skip
            for task, v in zip(CEREBRAS_TASKS, vals, strict=True):
                rows.append({"model": f"cerebras-gpt-{name}", "params": n, "task": task, "mode": mode,
                             "metric": "acc", "value": float(v), "higher_is_better": True,
                             "bounded": True})  # fmt: skip
    return pd.DataFrame(rows)


def qwen25() -> pd.DataFrame:
    rows = []
    for line in QWEN25.strip().splitlines():
        task, shots, metric, chance, *vals = line.split()
        mode = "mixed-shot" if shots == "mixed" else f"{shots}-shot"
        for n, v in zip(QWEN_PARAMS, vals, strict=True):
            rows.append({"model": f"qwen2.5-{n / 1e9:g}b", "params": n, "task": task, "mode": mode,
                         "metric": metric, "value": round(float(v) / 100, 4), "higher_is_better": True,
                         "bounded": True, "chance": None if chance == "-" else float(chance)})  # fmt: skip
    return pd.DataFrame(rows)


def obsscaling(git_dir: Path, ladder: str) -> pd.DataFrame:
    """One family's base models from ObsScaling's result files: every column with all its sizes."""
    models = OBSSCALING[ladder]
    rows = []
    for file, columns in OBSSCALING_FILES.items():
        df = pd.read_csv(io.BytesIO(_git(git_dir, f"eval_results/{file}.csv"))).set_index("Model")
        df = df.reindex(list(models))  # a size absent: all NaN
        if "Model Size (B)" in df:
            assert np.allclose(df["Model Size (B)"].to_numpy() * 1e9, list(models.values())), ladder
        meta = ("Model Family", "Model Size (B)", "Pretraining Data Size (T)", "FLOPs (1E21)")
        scores = [c for c in df.columns if c not in meta]
        assert set(scores) == set(columns), (file, set(scores) ^ set(columns))
        for col in scores:
            if df[col].isna().any():
                continue  # not measured for every size: not a series
            task, mode, metric, chance = columns[col]
            for n, v in zip(models.values(), df[col], strict=True):
                rows.append({"model": f"{ladder}-{n / 1e9:g}b", "params": n, "task": task, "mode": mode,
                             "metric": metric, "value": float(v), "higher_is_better": True, "bounded": True,
                             "chance": chance})  # fmt: skip
    return pd.DataFrame(rows)


def openlm(git_dir: Path, ladder: str) -> pd.DataFrame:
    """One training set's ladder at 20 tokens per parameter: every task of the evaluation files' `icl`
    metrics (the same 46 on every rung), values unchanged; shots and guessing accuracy from
    eval_metadata.csv."""
    data = OPENLM_DATA[ladder]
    meta = pd.read_csv(io.BytesIO(_git(git_dir, "exp_data/eval_metadata.csv"))).set_index("Eval Task")
    rows, tasks = [], None
    for config in OPENLM_CONFIGS:
        model = json.loads(_git(git_dir, f"exp_data/models/{data}-{config}-1.0.json"))
        hp = model["hyperparameters"]
        n = float(hp["params"])  # the files' exact count (the paper's nominal 0.011B ... 6.9B)
        assert model["dataset_name"] == data and hp["chinchilla_multiplier"] == 1.0, config
        assert hp["tokens"] == 20 * hp["params"], config
        evals = json.loads(_git(git_dir, f"exp_data/evals/evaluation_{data}-{config}-1.0_heavy.json"))
        assert evals["model"] == config, config
        icl = evals["eval_metrics"]["icl"]
        tasks = tasks or sorted(icl)
        assert sorted(icl) == tasks and all(0 <= icl[t] <= 1 for t in tasks), config
        for task in tasks:
            shots, chance = meta.loc[task, "#shots"], meta.loc[task, "Random baseline"] / 100
            rows.append({"model": f"{ladder}-{n / 1e9:.3g}b", "params": n, "task": task,
                         "mode": f"{shots}-shot", "metric": "acc", "value": float(icl[task]),
                         "higher_is_better": True, "bounded": True, "chance": float(chance)})  # fmt: skip
    return pd.DataFrame(rows)


def with_chance(df: pd.DataFrame) -> pd.DataFrame:
    """The `chance` column for accuracies of the tasks in CHANCE (empty for other metrics)."""
    acc = df["metric"] == "acc"
    return df.assign(chance=[CHANCE.get(t) if a else None for t, a in zip(df["task"], acc, strict=True)])


def chinchilla() -> pd.DataFrame:
    """The compute-optimal frontier (the paper's Approach 2): per IsoFLOP budget, a parabola in
    log N through that budget's points; its vertex is the optimal size and its loss."""
    df = pd.read_csv(ROOT / "tests" / "data" / "chinchilla_svg_extracted_data.csv")
    df = df[df["loss"] < df["loss"].nlargest(5).min()]  # the replication's 240 points
    logc = np.log10(df["Training FLOP"].to_numpy())
    budgets = np.log10(CHINCHILLA_BUDGETS)
    nearest = np.abs(logc[:, None] - budgets[None]).argmin(1)
    near = np.abs(logc - budgets[nearest]) < 0.1
    rows = []
    for b in sorted(set(nearest[near])):
        g = df[(nearest == b) & near]
        c2, c1, c0 = np.polyfit(np.log(g["Model Size"]), g["loss"], 2)
        if len(g) < 4 or c2 <= 0:
            continue  # no minimum inside this budget's points
        x = -c1 / (2 * c2)
        rows.append({"model": f"isoflop-{CHINCHILLA_BUDGETS[b]:.0e}", "params": float(np.exp(x)),
                     "task": "massivetext", "mode": "compute-optimal", "metric": "loss",
                     "value": float(c0 + c1 * x + c2 * x * x), "higher_is_better": False,
                     "bounded": False})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pythia-git", type=Path, required=True, help="git directory of EleutherAI/pythia")
    ap.add_argument("--obsscaling-git", type=Path, required=True, help="git directory of ryoungj/ObsScaling")
    ap.add_argument("--scaling-git", type=Path, required=True, help="git directory of mlfoundations/scaling")
    a = ap.parse_args()
    tables = {
        "chinchilla": chinchilla(),
        "pythia": pythia(a.pythia_git, deduped=False),
        "pythia-deduped": pythia(a.pythia_git, deduped=True),
        "pythia-5shot": pythia_5shot(a.pythia_git),
        "opt": opt(a.pythia_git),
        "cerebras-gpt": cerebras(),
    }
    tables = {name: with_chance(df) for name, df in tables.items()}
    tables["qwen2.5"] = qwen25()
    for name in OBSSCALING:
        tables[name] = obsscaling(a.obsscaling_git, name)
    for name in OPENLM_DATA:
        tables[name] = openlm(a.scaling_git, name)
    for name, df in tables.items():
        df.to_csv(HERE / f"{name}.csv", index=False)
        series = df.groupby(["task", "mode", "metric"]).ngroups
        print(f"{name}: {df['model'].nunique()} rungs, {series} series")


if __name__ == "__main__":
    main()
