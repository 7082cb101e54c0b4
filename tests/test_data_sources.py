"""Data from a URI, and the node lock: a fresh node's trials, starting together, fetch the data
and run torchvision's download once, and the others reuse what the first one wrote.

The races are real: four processes started at once on one cache folder, the source slowed down
so that the first one is still copying when the others arrive. (An S3 URI served by a real S3
server is exercised in tests/test_cluster.py.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pyarrow.fs as pafs
import pytest

from conftest import ROOT, write_image_tree
from study import artifacts
from study.data import fetch, load_cifar10, resolve_source
from study.errors import InputError


@pytest.fixture
def tiny_tar(tmp_path):
    tree = write_image_tree(tmp_path / "tree", 3, 2)
    path = tmp_path / "bucket" / "cifar10.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    return path


@pytest.fixture
def fake_bucket(tiny_tar, monkeypatch):
    """s3://bucket/... served from the folder holding tiny_tar (pyarrow's local filesystem under
    the same interface), so the URI path runs without a server."""
    real = artifacts.filesystem

    def filesystem(uri):
        if uri.startswith("s3://bucket/"):
            return pafs.LocalFileSystem(), str(tiny_tar.parent / uri.removeprefix("s3://bucket/"))
        return real(uri)
    monkeypatch.setattr(artifacts, "filesystem", filesystem)
    return tiny_tar


def test_a_uri_source_is_fetched_once_and_recorded_as_the_uri(fake_bucket, private_cache, monkeypatch):
    monkeypatch.setenv("NOISESINK_DATA", "s3://bucket/cifar10.tar")
    assert resolve_source(None) == ("uri", "s3://bucket/cifar10.tar")
    load_cifar10.cache_clear()
    d = load_cifar10(None, "shapes")
    assert d.source == "s3://bucket/cifar10.tar" and d.kind == "tar"
    local = load_cifar10.__wrapped__(str(fake_bucket), "shapes")
    assert d.checksum == local.checksum  # the same bytes as the local tar: the same cache entry
    np.testing.assert_array_equal(d.train_x, local.train_x)
    path, fetched = fetch("s3://bucket/cifar10.tar")
    assert not fetched and path.read_bytes() == fake_bucket.read_bytes()


def test_a_changed_object_is_fetched_again(fake_bucket, private_cache):
    first, _ = fetch("s3://bucket/cifar10.tar")
    with open(fake_bucket, "ab") as f:  # a new version: another size and modification time
        f.write(b"\0" * 1024)
    second, fetched = fetch("s3://bucket/cifar10.tar")
    assert fetched and second != first and second.stat().st_size == first.stat().st_size + 1024


@pytest.mark.parametrize("uri, problem", [("s3://bucket/missing.tar", "no such object"),
                                          ("s3://bucket/", "names a folder")])
def test_a_bad_data_uri_names_the_variable_and_the_uri(fake_bucket, monkeypatch, uri, problem):
    monkeypatch.setenv("NOISESINK_DATA", uri)
    with pytest.raises(InputError, match=rf"NOISESINK_DATA: {problem}.*{uri}"):
        resolve_source(None)


def test_an_object_that_is_not_a_tar_is_refused(fake_bucket, private_cache):
    (fake_bucket.parent / "notes.txt").write_text("not CIFAR-10")
    load_cifar10.cache_clear()
    with pytest.raises(InputError, match=r"s3://bucket/notes.txt: the object is not a tar archive"):
        load_cifar10("s3://bucket/notes.txt", "shapes")


# ---------------------------------------------------------------- four processes, one node

RACE = textwrap.dedent("""
    import json, sys, time, types
    sys.path.insert(0, {root!r})
    mode, arg, counter = sys.argv[1:4]

    def slowly(n):  # keeps the first process busy while the others arrive
        time.sleep(0.5)
        with open(counter, "a") as f:
            f.write(n + "\\n")

    if mode == "fetch":
        import pyarrow.fs as pafs
        from study import artifacts, data

        class SlowFS:
            def __init__(self):
                self.fs = pafs.LocalFileSystem()
            def get_file_info(self, path):
                return self.fs.get_file_info(path)
            def open_input_stream(self, path):
                slowly("fetch")
                return self.fs.open_input_stream(path)
        artifacts.filesystem = lambda uri: (SlowFS(), uri.removeprefix("s3://bucket"))
        path, fetched = data.fetch("s3://bucket" + arg)
        print(json.dumps({{"fetched": fetched, "size": path.stat().st_size}}))
    else:  # torchvision's download, replaced by one that writes a small copy slowly
        sys.path.insert(0, {tests!r})
        from conftest import write_torchvision_folder

        class CIFAR10:
            def __init__(self, root, train=True, download=False):
                slowly("download")
                write_torchvision_folder(__import__("pathlib").Path(root), 20, 10)
        sys.modules["torchvision"] = types.ModuleType("torchvision")
        sys.modules["torchvision.datasets"] = types.SimpleNamespace(CIFAR10=CIFAR10)
        from study import data
        d = data.load_cifar10(None, "shapes")
        print(json.dumps({{"checksum": d.checksum, "n": len(d.train_y)}}))
""").format(root=str(ROOT), tests=str(ROOT / "tests"))


def race(tmp_path, mode: str, arg: str, n: int = 4) -> tuple[list[dict], list[str]]:
    script, counter = tmp_path / "race.py", tmp_path / "calls.txt"
    script.write_text(RACE)
    env = {**os.environ, "NOISESINK_CACHE": str(tmp_path / "node-cache")}
    env.pop("NOISESINK_DATA", None)
    procs = [subprocess.Popen([sys.executable, str(script), mode, arg, str(counter)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs, counter.read_text().split()


def test_processes_starting_together_fetch_a_uri_once(tmp_path, tiny_tar):
    outs, calls = race(tmp_path, "fetch", str(tiny_tar))
    assert calls == ["fetch"]
    assert sorted(o["fetched"] for o in outs) == [False, False, False, True]
    assert {o["size"] for o in outs} == {tiny_tar.stat().st_size}


def test_processes_starting_together_download_once(tmp_path):
    outs, calls = race(tmp_path, "download", "")
    assert calls == ["download"]
    assert len({o["checksum"] for o in outs}) == 1 and {o["n"] for o in outs} == {200}
    cache = tmp_path / "node-cache" / "torchvision"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]  # no staging left
