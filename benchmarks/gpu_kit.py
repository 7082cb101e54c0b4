"""Build the folder a bare, offline GPU machine needs beside the working tree: CIFAR-10 and wheels.

    python benchmarks/gpu_kit.py build .device                # here, with network to PyPI
    python benchmarks/gpu_kit.py build DIR --data TAR --no-wheels   # a kit of other data (tests)

The lent GPU machine (docs/performance.md) has python3 3.12 with torch, torchvision, numpy,
pandas, scipy, statsmodels, networkx, matplotlib, pyarrow, pyyaml, pillow and timm, and nothing
else; it reaches no network, and receives the working tree plus carried folders, 64 MiB in all.
The kit holds:

- `cifar.npz`: the JPEG bytes of the CIFAR-10 tar (benchmarks/device_data.py), rebuilt into a
  tar there by `gpu_check.py`;
- `whl/`: a wheel for each package the trials need that the machine lacks (the project's runtime
  dependencies and theirs, less what the machine has and Ray, which the local executor does not
  need), at the version installed here, for CPython 3.12 on manylinux x86_64;
- `MANIFEST.json`: every file with its size and sha256, and the data source's.

The kit must stay under KIT_LIMIT_MIB; the build fails otherwise. When the kit folder is inside
this repository it is listed in git's info/exclude: it is carried, never committed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from device_data import pack  # noqa: E402

KIT_LIMIT_MIB = 60          # 64 MiB travel with the tree; the tree itself is < 1 MiB, keep a margin
DATA_FILE = "cifar.npz"
WHEELS = "whl"
MANIFEST = "MANIFEST.json"
# What the lent GPU machine has installed (and, with them, their own dependencies).
DEVICE_HAS = ("torch", "torchvision", "numpy", "pandas", "scipy", "statsmodels", "networkx",
              "matplotlib", "pyarrow", "pyyaml", "pillow", "timm")
NOT_NEEDED = ("ray",)       # the device runs studies with `--executor local`
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requires: list[str] | None) -> list[str]:
    """The names of the unconditional requirements (no extras, no markers) in metadata's list."""
    out = []
    for req in requires or []:
        if ";" in req:      # a marker: an extra, or another Python or platform than the device's
            continue
        out.append(canonical(re.match(r"[A-Za-z0-9_.-]+", req).group(0)))
    return out


def closure(names) -> set[str]:
    """The packages and, recursively, their unconditional dependencies, from the metadata installed
    here (the same releases, or near, as the device's)."""
    seen, todo = set(), [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += requirement_names(metadata.requires(name))
        except metadata.PackageNotFoundError:
            pass
    return seen


def project_requirements() -> list[str]:
    """The project's runtime dependencies, as pyproject.toml lists them."""
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return requirement_names(deps)


def missing_on_device() -> dict[str, str]:
    """{package: version installed here} for what the trials need and the device lacks."""
    has = closure(DEVICE_HAS)
    needed = closure(n for n in project_requirements() if n not in NOT_NEEDED) - has
    return {name: metadata.version(name) for name in sorted(needed)}


def download_wheels(packages: dict[str, str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in packages.items():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", DEVICE_PYTHON, "--implementation", "cp",
               *[x for p in DEVICE_PLATFORMS for x in ("--platform", p)],
               "-d", str(folder), f"{name}=={version}"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return sorted(folder.glob("*.whl"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_data() -> Path:
    env = os.environ.get("NOISESINK_DATA")
    for candidate in (env, ROOT.parent / "shared" / "data" / "cifar10-jpg.tar"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    sys.exit("no CIFAR-10 tar: set NOISESINK_DATA or pass --data (an image-folder tar, e.g. cifar10-jpg.tar)")


def exclude_from_git(kit: Path) -> None:
    """List the kit in this repository's info/exclude (shared by its worktrees) if it lies inside."""
    try:
        rel = kit.resolve().relative_to(ROOT)
    except ValueError:
        return
    path = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-path", "info/exclude"],
                          capture_output=True, text=True, check=True).stdout.strip()
    exclude = (ROOT / path) if not os.path.isabs(path) else Path(path)
    line = f"/{rel.as_posix()}/"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if line not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as f:
            f.write(("\n" if lines and lines[-1] else "") + line + "\n")
        print(f"listed {line} in {exclude}")


def build(kit: Path, data: Path, wheels: bool) -> dict:
    kit.mkdir(parents=True, exist_ok=True)
    exclude_from_git(kit)
    source_sha = sha256(data)
    npz = kit / DATA_FILE
    old = json.loads((kit / MANIFEST).read_text()) if (kit / MANIFEST).exists() else {}
    if not (npz.exists() and old.get("data_source_sha256") == source_sha):
        pack(str(data), str(npz))
    packages = missing_on_device() if wheels else {}
    for stale in (kit / WHEELS).glob("*.whl") if (kit / WHEELS).exists() else []:
        stale.unlink()
    files = [npz, *(download_wheels(packages, kit / WHEELS) if packages else [])]
    manifest = {
        "built": time.strftime("%Y-%m-%d %H:%M:%S"), "data_source": str(data), "data_source_sha256": source_sha,
        "packages": packages, "device_has": list(DEVICE_HAS),
        "files": {f.relative_to(kit).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in files},
    }
    manifest["total_mib"] = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for name, f in manifest["files"].items():
        print(f"  {f['bytes'] / 2**20:7.2f} MiB  {name}")
    print(f"kit {kit}: {manifest['total_mib']:.1f} MiB (limit {KIT_LIMIT_MIB} MiB); packages: "
          f"{', '.join(f'{k}=={v}' for k, v in packages.items()) or 'none'}")
    if manifest["total_mib"] > KIT_LIMIT_MIB:
        sys.exit(f"the kit is {manifest['total_mib']:.1f} MiB, over the {KIT_LIMIT_MIB} MiB that fit beside the tree")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu_kit.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="make or refresh the kit folder")
    b.add_argument("kit", type=Path, help="the folder to carry, e.g. .device")
    b.add_argument("--data", type=Path, help="CIFAR-10 image-folder tar (default: NOISESINK_DATA, "
                   "else ../shared/data/cifar10-jpg.tar)")
    b.add_argument("--no-wheels", action="store_true", help="data only (a machine that has the packages)")
    args = ap.parse_args(argv)
    build(args.kit, args.data or default_data(), wheels=not args.no_wheels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
