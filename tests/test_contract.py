"""The artifact contract (analysis/contract.py): one copy of every shared name, importable without
torch, and a trial.json of an unknown schema reported by name while the rest is aggregated."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from analysis import contract
from analysis.pipeline import aggregate
from analysis.synthetic import Condition, write_study
from conftest import ROOT


def test_the_contract_imports_neither_torch_ray_nor_study():
    code = ("import sys, analysis.contract; "
            "bad = [m for m in ('torch', 'ray', 'study') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("literal", [contract.TRIAL_JSON, contract.ARRAYS_NPZ, contract.STUDY_JSON,
                                     '"airplane", "automobile"'])
def test_shared_names_are_written_once(literal):
    """Only the contract spells a file name or the class list; everything else imports it."""
    quoted = literal if literal.startswith('"') else f'"{literal}"'
    hits = [f"{p.relative_to(ROOT)}:{i}" for pkg in ("study", "analysis") for p in sorted((ROOT / pkg).glob("*.py"))
            if p.name != "contract.py" for i, line in enumerate(p.read_text().splitlines(), 1) if quoted in line]
    assert hits == [], f"{literal} spelled outside analysis/contract.py: {hits}"


def test_join_uri_keeps_the_query_at_the_end():
    assert contract.join_uri("s3://b/p?endpoint_override=h:9000", "study", "report") == \
        "s3://b/p/study/report?endpoint_override=h:9000"
    assert contract.join_uri("/tmp/results/", "", "/report") == "/tmp/results/report"


def test_trial_folder_names_are_readable_and_unique():
    assert contract.trial_dirname({"classes": ["cat", "dog"], "seed": 3}) == "classes=cat.dog_seed=3"
    odd = [contract.trial_dirname({"data_root": p}) for p in ("/a b/c", "/a-b/c")]
    assert len(set(odd)) == 2 and all(re.fullmatch(r"[A-Za-z0-9_.=-]+", n) for n in odd)


def test_an_unknown_schema_is_a_problem_by_name_and_the_rest_aggregates(tmp_path):
    study = write_study(tmp_path, [Condition("flip", absorber="bird")], seeds=4)
    newer = study / "augmentation=flip_seed=2" / contract.TRIAL_JSON
    trial = json.loads(newer.read_text())
    newer.write_text(json.dumps({**trial, "schema": contract.SCHEMA_VERSION + 1}))
    unversioned = study / "augmentation=flip_seed=3" / contract.TRIAL_JSON
    unversioned.write_text(json.dumps({k: v for k, v in trial.items() if k != "schema"}))
    aggregate(str(study))
    report = study / contract.REPORT_DIR
    problems = pd.read_csv(report / "problems.csv").set_index("trial_id")["reason"]
    assert sorted(problems.index) == ["augmentation=flip_seed=2", "augmentation=flip_seed=3"]
    assert f"schema {contract.SCHEMA_VERSION + 1}" in problems["augmentation=flip_seed=2"]
    assert "lacks schema" in problems["augmentation=flip_seed=3"]
    assert sorted(pd.read_csv(report / "runs.csv")["trial_id"]) == ["augmentation=flip_seed=0",
                                                                    "augmentation=flip_seed=1"]


def test_ray_only_in_the_sweep_adapter():
    """The plan (what `study check` prints, what any executor runs) needs no Ray."""
    users = sorted(p.name for p in (ROOT / "study").glob("*.py")
                   if re.search(r"^\s*(import ray|from ray\b)", p.read_text(), flags=re.M))
    assert users == ["sweep.py", "tune_trial.py"]
    code = "import sys, study.plan, study.units, study.local; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, lazy imports inside functions included."""
    import ast
    graph: dict[str, set[str]] = {}
    for pkg in ("study", "analysis"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            mod, edges = f"{pkg}.{path.stem}", set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    edges |= {f"{pkg}.{node.module}"} if node.module else {f"{pkg}.{a.name}" for a in node.names}
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("study", "analysis"):
                    edges |= ({f"{node.module}.{a.name}" for a in node.names} if "." not in node.module
                              else {node.module})
                elif isinstance(node, ast.Import):
                    edges |= {a.name for a in node.names if a.name.split(".")[0] in ("study", "analysis")}
            graph[mod] = {e for e in edges if e != mod}
    return graph


def test_the_import_graph_has_no_circle_and_analysis_never_imports_study():
    """study/ and analysis/ import each other's modules without a circle (lazy imports counted): a
    module can be read knowing only what it imports. analysis/ (no torch) never imports study/."""
    import networkx as nx
    graph = _import_graph()
    g = nx.DiGraph([(a, b) for a, targets in graph.items() for b in targets if b in graph])
    assert list(nx.simple_cycles(g)) == []
    assert not [(a, b) for a, b in g.edges if a.startswith("analysis.") and b.startswith("study.")]


def test_the_contract_file_names_are_spelled_only_in_the_contract():
    """A path built from a contract file name ("trial.json", "arrays.npz", "study.json") anywhere
    but analysis/contract.py would drift from it: code uses TRIAL_JSON, ARRAYS_NPZ, STUDY_JSON."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    spelled = re.compile(r"""(/|glob\(|join_uri\([^)]*,)\s*f?["'][^"'\n]*\b(trial\.json|arrays\.npz|study\.json)["']""")
    leaks = [f"{p.relative_to(root)}:{i}"
             for folder in ("study", "analysis", "benchmarks") for p in (root / folder).rglob("*.py")
             if p.name != "contract.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if spelled.search(line)]
    assert leaks == []


def test_no_private_name_is_imported_across_modules():
    """A name another module needs is public: `from .x import _y` (lazy imports included) would make a
    module's private helper part of its interface without saying so."""
    import ast
    offenders = []
    for pkg in ("study", "analysis"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in
                                                         ("study", "analysis")):
                    offenders += [f"{pkg}/{path.name}: {a.name}" for a in node.names
                                  if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []
