"""The claim register (docs/claims.csv): every tested claim a findings document makes, one row each.

A claim is a sentence of docs/findings-*.md that rests on a test: it cites the register as
`[C12: ...]`, and the bracket's text is the register's row rendered (`render`), so every number in
it is the register's and the register's are the committed tables'. The register's first columns
are written by hand and select one row of a study's committed tests.csv (SELECT: the document, the
results folder under docs/results/, the test id, condition, noise family and variable); the rest is
read from that row (n, estimate, interval, p, smallest attainable p, family and p adjusted in it,
whether a condition is too weak to interpret) and adjusted once more: Holm over **all** confirmatory
claims of the document (`p_all`), since a reader takes the document's claims together, across its
studies. A claim of the exploratory family keeps its family's adjustment and gets no `p_all`.

    python -m analysis.claims            # refresh docs/claims.csv from the tables, render the documents' tags
    python -m analysis.claims --check    # write nothing: exit 2 when the register or a document is stale

tests/test_claims.py fails when the register differs from what the tables give, when a selector
matches no row or several, or when a document's tag differs from the register's rendering.
Descriptive numbers (means, shares, accuracies with no test) are measurements, not claims: they
are not registered.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from .document import fmt_p
from .errors import InputError, exit_code
from .inference import PAIRED_MEAN
from .stats import ALPHA, needed_p

ROOT = Path(__file__).resolve().parent.parent
REGISTER = ROOT / "docs" / "claims.csv"
RESULTS = ROOT / "docs" / "results"
SELECT = ["claim", "document", "study", "test", "condition", "noise", "variable"]
FILLED = ["family", "n", "effect_name", "estimate", "ci_low", "ci_high", "p", "p_min", "p_family",
          "p_all", "p_needed", "too_weak", "verdict"]
COLUMNS = SELECT + FILLED
CONFIRMATORY = ("confirmatory", "factors")   # families a study pre-registers with Holm (the factors family is a
                                             # factorial study's confirmatory one): these enter `p_all`
TAG = re.compile(r"\[(C\d+): ([^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]")   # [C12: ... [lo, hi] ...]


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def committed_weak(study: str, results: Path = RESULTS, margin: float | None = None) -> tuple[set, set]:
    """(conditions too weak to interpret, all conditions) of a committed study that predates the
    guard: from its runs.csv (each run's test accuracy) and its sweep's test_subset, split over the
    classes as study/task.py does (docs/results/cpu-NAME/ is sweeps/NAME.yaml's study)."""
    import yaml

    from . import guard
    runs = pd.read_csv(results / study / "runs.csv")
    sweep = ROOT / "sweeps" / f"{study.removeprefix('cpu-')}.yaml"
    n = yaml.safe_load(sweep.read_text())["trial"]["test_subset"]
    groups: dict[str, list] = {}
    for r in runs[runs["status"] == "completed"].itertuples():
        classes = r.classes.split(".")
        groups.setdefault(r.condition, []).append({"classes": classes, "test_accuracy": r.test_accuracy,
                                                   "n_test": -(-n // len(classes)) * len(classes)})
    table = guard.accuracy_guard(groups, **({} if margin is None else {"margin": margin}))
    return guard.weak_conditions(table), set(groups)


def _too_weak(tests: pd.DataFrame, study: str, results: Path) -> pd.Series:
    """Per tests.csv row: does it rest on a condition too weak to interpret? The table's own mark
    where it has one, else the guard applied to the committed runs."""
    if "too_weak" in tests.columns:
        return tests["too_weak"].astype(str) == "True"
    from .guard import involves
    weak, conditions = committed_weak(study, results)
    return tests["condition"].map(lambda c: involves(c, weak, conditions))


def study_tests(study: str, results: Path = RESULTS) -> pd.DataFrame:
    """A study's committed tests.csv with each row's `too_weak`, read once per study (fill)."""
    path = results / study / "tests.csv"
    if not path.exists():
        raise InputError("docs/claims.csv", "names a study with no committed tests.csv",
                         "a folder of docs/results/ holding tests.csv", study)
    tests = pd.read_csv(path, keep_default_na=False, na_values=[""])
    tests["too_weak"] = _too_weak(tests, study, results)
    return tests


def source_row(claim: pd.Series, tests: pd.DataFrame) -> pd.Series:
    """The one row of the study's tests (study_tests) the claim selects; an InputError naming the
    claim when none or several match."""
    hit = tests
    for key in ("test", "condition", "noise", "variable"):
        hit = hit[hit[key].map(_text) == _text(claim[key])]
    if len(hit) != 1:
        raise InputError(f"docs/claims.csv, {claim['claim']}",
                         f"selects {len(hit)} rows of {claim['study']}/tests.csv",
                         "exactly one (test, condition, noise, variable)",
                         "/".join(_text(claim[k]) for k in ("test", "condition", "noise", "variable")))
    return hit.iloc[0]


def estimate(src: pd.Series) -> tuple[str, float]:
    """(name, value) of the row's estimate, the one its interval is about. Tables aggregated before
    the code reported it so (docs/results/cpu-*, see their REVISION) differ in two conventions,
    applied here as the code applies them now: a sign-flip row (and `bias_deal`, `causal_dose`)
    reported the standardised difference (`mean diff / sd`, `... over its sd`), 0 where every run
    agreed, and beside a t interval of the mean difference, which its `statistic` holds; the pair
    agreement was not truncated to its parameter space [1/K, 1] (where it fell below, the
    interval's floor is 1/K)."""
    name, value = _text(src["effect_name"]), float(src["effect"]) if _text(src["effect"]) else np.nan
    if name == "mean diff / sd":   # a sign-flip row: its statistic is the mean paired difference
        return PAIRED_MEAN, float(src["statistic"])
    if name.endswith(" over its sd"):   # bias_deal: the statistic is the mean rank the interval is of
        return name.removesuffix(" over its sd"), float(src["statistic"])
    if src["test"] == "causal_dose":   # its statistic is the mean rho (older tables' effect: standardised)
        return name, float(src["statistic"])
    if name == "pair agreement" and np.isfinite(src["ci_low"]) and np.isfinite(value):
        return name, max(value, float(src["ci_low"]))   # the interval's floor is 1/K (stats.pair_agreement)
    return name, value


def verdict(row: dict) -> str:
    """Shown / not shown / cannot be tested / too weak to interpret, from the adjusted p that counts:
    over all the document's confirmatory claims for a confirmatory one, its family's otherwise. A
    claim cannot be tested where its smallest attainable p cannot clear the level that adjustment
    demands (`p_needed`: for a confirmatory claim, Holm over the document's, stats.needed_p)."""
    if row["too_weak"]:
        return "too weak to interpret"
    if not row["can_reject"] or row["p_min"] > row["p_needed"] + 1e-12:
        return "cannot be tested"
    p = row["p_all"] if row["family"] in CONFIRMATORY else row["p_family"]
    return "shown" if p < ALPHA else "not shown"


def fill(register: pd.DataFrame, results: Path = RESULTS) -> pd.DataFrame:
    """The register's computed columns from the committed tables (SELECT columns kept as given)."""
    missing = [c for c in SELECT if c not in register.columns]
    if missing:
        raise InputError("docs/claims.csv", f"lacks the column(s) {missing}", f"the columns {SELECT}",
                         list(register.columns))
    dup = register["claim"][register["claim"].duplicated()]
    if len(dup):
        raise InputError("docs/claims.csv", "holds a claim id twice", "one row per claim id", dup.iloc[0])
    rows, tables = [], {}
    for _, claim in register[SELECT].iterrows():
        if claim["study"] not in tables:
            tables[claim["study"]] = study_tests(claim["study"], results)
        src = source_row(claim, tables[claim["study"]])
        rows.append({**{k: claim[k] for k in SELECT}, "family": src["family"], "n": int(src["n_runs"]),
                     **dict(zip(("effect_name", "estimate"), estimate(src))),
                     "ci_low": src["ci_low"], "ci_high": src["ci_high"], "p": src["p_value"],
                     "p_min": src["p_min"], "p_family": src["p_adjusted"], "p_all": np.nan,
                     "too_weak": bool(src["too_weak"]),
                     "can_reject": bool(src["can_reject"]), "p_needed": float(src["p_needed"])})
    out = pd.DataFrame(rows)
    for _doc, idx in out.groupby("document").groups.items():   # Holm over each document's confirmatory claims
        conf = [i for i in idx if out.at[i, "family"] in CONFIRMATORY and not out.at[i, "too_weak"]]
        if conf:
            raw = out.loc[conf, "p"].to_numpy(float)
            out.loc[conf, "p_all"] = multipletests(raw, method="holm")[1]
            out.loc[conf, "p_needed"] = needed_p(raw, "holm")
    out["verdict"] = [verdict(r) for r in out.to_dict("records")]
    return out[COLUMNS]


def _num(x) -> str:
    return f"{x:.2f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"


def render(row: dict, n_confirmatory: int) -> str:
    """A claim's tag text: what the document prints after `[Cn: `."""
    parts = [f"`{row['test']}`", f"n = {row['n']}"]
    if _text(row["effect_name"]) and np.isfinite(row["estimate"]):
        ci = (f" [{_num(row['ci_low'])}, {_num(row['ci_high'])}]"
              if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]) else "")
        parts.append(f"{row['effect_name']} {_num(row['estimate'])}{ci}")
    parts.append(f"p {fmt_p(row['p'])} (smallest attainable {fmt_p(row['p_min'])})")
    if np.isfinite(row["p_all"]):
        parts.append(f"Holm {fmt_p(row['p_family'])} in its study's {row['family']} family, {fmt_p(row['p_all'])} over "
                     f"the document's {n_confirmatory} confirmatory claims")
    else:
        parts.append(f"{row['family']}, adjusted {fmt_p(row['p_family'])}")
    parts.append(row["verdict"])
    return "; ".join(parts)


def tags(register: pd.DataFrame) -> dict[str, str]:
    """claim id -> its rendered tag text."""
    out = {}
    for _doc, rows in register.groupby("document"):
        n_conf = int(rows["p_all"].notna().sum())
        out.update({r["claim"]: render(r, n_conf) for r in rows.to_dict("records")})
    return out


def table(register: pd.DataFrame, document: str) -> str:
    """The document's closing table: every claim it registers, confirmatory first (the prose cites
    some of them; the table lists all, so the document makes no claim the register lacks and the
    family of `p_all` is visible whole)."""
    rows = register[register["document"] == document].copy()
    rows["order"] = (~rows["family"].isin(CONFIRMATORY)).astype(int)
    rows["number"] = rows["claim"].str.extract(r"(\d+)", expand=False).astype(int)
    lines = ["| claim | study | test | condition | noise | n | estimate [95% CI] | p (smallest) | "
             "adjusted in its family | over all confirmatory | verdict |", "|" + "---|" * 11]
    for r in rows.sort_values(["order", "number"], kind="stable").to_dict("records"):
        est = (f"{r['effect_name']} {_num(r['estimate'])}" if _text(r["effect_name"]) and np.isfinite(r["estimate"])
               else "")
        if est and np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
            est += f" [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        cond = _text(r["condition"]).replace("|", "/") + (f"; {_text(r['variable'])}" if _text(r["variable"]) else "")
        lines.append(f"| {r['claim']} | {r['study']} | `{r['test']}` | {cond} | {_text(r['noise'])} | {r['n']} | "
                     f"{est} | {fmt_p(r['p'])} ({fmt_p(r['p_min'])}) | {r['family']} {fmt_p(r['p_family'])} | "
                     f"{fmt_p(r['p_all']) if np.isfinite(r['p_all']) else ''} | {r['verdict']} |")
    return "\n".join(lines)


BEGIN, END = "<!-- claims: rendered by `python -m analysis.claims` -->", "<!-- claims: end -->"


def check_document(path: Path, register: pd.DataFrame) -> list[str]:
    """Problems of one findings document against the register: a tag whose text is not the
    register's, a cited id the register lacks, a closing table that is not the register's."""
    text = path.read_text()
    want = tags(register)
    problems = []
    for claim, body in TAG.findall(text):
        if claim not in want:
            problems.append(f"{path.name}: [{claim}] is not in docs/claims.csv")
        elif body != want[claim]:
            problems.append(f"{path.name}: [{claim}] reads {body!r}; the register gives {want[claim]!r}")
    block = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, flags=re.S)
    if block is None:
        problems.append(f"{path.name}: no claims table (the lines {BEGIN!r} ... {END!r})")
    elif block[1] != table(register, path.name) + "\n":
        problems.append(f"{path.name}: the claims table differs from the register's")
    return problems


def rewrite_document(path: Path, register: pd.DataFrame) -> None:
    """Replace each tag's text and the closing table by the register's rendering (the command the
    document's author runs after editing the register or the tables)."""
    want = tags(register)
    text = TAG.sub(lambda m: f"[{m[1]}: {want.get(m[1], m[2])}]", path.read_text())
    text = re.sub(re.escape(BEGIN) + r"\n.*?" + re.escape(END),
                  lambda m: f"{BEGIN}\n{table(register, path.name)}\n{END}", text, flags=re.S)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="noisesink claims", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the register and the documents; write nothing")
    args = ap.parse_args(argv)

    def run() -> None:
        register = fill(pd.read_csv(REGISTER, keep_default_na=False, na_values=[""]))
        problems = []
        if args.check:
            committed = pd.read_csv(REGISTER, keep_default_na=False, na_values=[""])
            if not committed.astype(str).equals(register.astype(str)):
                problems.append("docs/claims.csv differs from what the committed tables give")
        else:
            register.to_csv(REGISTER, index=False)
        for doc in sorted(register["document"].unique()):
            path = ROOT / "docs" / doc
            if not args.check:
                rewrite_document(path, register)
            problems += check_document(path, register)
        print(f"claims: {len(register)} registered, "
              f"{int(register['p_all'].notna().sum())} confirmatory; {len(problems)} problem(s)")
        for p in problems:
            print("  " + p)
        if problems:
            raise InputError("docs/findings-*.md", "cite claims that differ from docs/claims.csv",
                             "tags as rendered from the register", problems[0])
    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
