"""The installed `noisesink` command: every subcommand listed and reachable, --version, a license,
and the shipped sweeps and configs usable outside a git checkout (from a built wheel)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from study.__main__ import DELEGATED, SHIPPED, _parser, main

NOISESINK = Path(sys.executable).parent / "noisesink"   # the console script of this install


def subcommands() -> list[str]:
    (action,) = [a for a in _parser()._actions if a.dest == "command"]
    return list(action.choices)


def test_help_lists_every_subcommand():
    out = subprocess.run([str(NOISESINK), "--help"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^    (\w+)\s", out, re.M)
    assert listed == subcommands()
    assert {"trial", "check", "sweep", "analyze", "bench", "init"} <= set(listed)


def test_every_module_with_a_command_line_is_a_subcommand():
    """A module that runs as `python -m ...` is reachable as `noisesink <name>` too."""
    modules = {f"{p.parent.name}.{p.stem}" for pkg in ("study", "analysis")
               for p in (ROOT / pkg).glob("*.py")
               if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M)}
    modules.discard("study.__main__")   # this command line itself
    assert modules == {module for module, _ in DELEGATED.values()}, modules


@pytest.mark.parametrize("name", sorted(DELEGATED))
def test_a_delegated_subcommand_is_that_modules_own_command_line(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_version_is_the_installed_one():
    out = subprocess.run([str(NOISESINK), "--version"], capture_output=True, text=True, check=True).stdout
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert out.strip() == f"noisesink {declared}"


def test_init_copies_the_shipped_files_and_never_overwrites(tmp_path, capsys):
    assert main(["init", str(tmp_path / "study")]) == 0
    for folder in SHIPPED:
        copied = sorted(p.name for p in (tmp_path / "study" / folder).iterdir())
        assert copied == sorted(p.name for p in (ROOT / folder).glob("*.yaml")) and copied
    (tmp_path / "study" / "sweeps" / "smoke.yaml").write_text("name: mine\n")
    assert main(["init", str(tmp_path / "study")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "study" / "sweeps" / "smoke.yaml").read_text() == "name: mine\n"


def test_the_license_is_declared_and_shipped():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


@pytest.mark.slow
def test_a_wheel_carries_the_command_the_license_and_the_shipped_files(tmp_path):
    """Build the wheel from a copy of the sources (no build debris in the checkout), install it
    alone into a fresh environment and run `noisesink init` there, far from any checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "study", "analysis", *SHIPPED):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copyfile
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("noisesink-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for folder in SHIPPED:
        for f in (ROOT / folder).glob("*.yaml"):
            assert f"study/{folder}/{f.name}" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "noisesink = study.__main__:main" in entry

    # installed alone into a folder of its own (its dependencies from this environment), run from
    # a folder far from the checkout: the study package and the files come from the wheel
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import study; print(study.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), where
    cmd = str(target / "bin" / "noisesink")
    res = subprocess.run([cmd, "init", "mystudy"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert ((elsewhere / "mystudy" / "sweeps" / "smoke.yaml").read_bytes()
            == (ROOT / "sweeps" / "smoke.yaml").read_bytes())
