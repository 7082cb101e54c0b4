"""CIFAR-10 from wherever it is, decoded once into a cached uint8 array, then cut into a task.

Sources, in order of precedence: the config's `data_root`, the environment variable
NOISESINK_DATA, a copy torchvision already downloaded into the cache folder, torchvision's
download. A source is a torchvision folder (`cifar-10-batches-py` or its parent), an image-folder
tree (`train/<class>/*`, `test/<class>/*`), a `.tar` of such a tree, or the URI of such a .tar
(`s3://bucket/cifar10.tar`, anything pyarrow opens), fetched once per node into the cache.
Decoded arrays are cached under the user cache folder, keyed by the sha256 of the source, never
beside the source (which may be read-only). Fetching, torchvision's download and decoding run
under one file lock per cache folder, so trials starting together on a fresh node do the work
once and the others wait for it.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from pathlib import Path, PurePosixPath

import numpy as np

from analysis.contract import CIFAR10_CLASSES

from .errors import InputError

FULL_COUNTS = {"train": 5000, "test": 1000}  # images per class in the real CIFAR-10
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_FORMAT = 1  # bump when the cached array layout changes
SOURCE_HELP = ("set `data_root` in the config or NOISESINK_DATA to a CIFAR-10 copy: a "
               "`cifar-10-batches-py` folder (or its parent), an image-folder tree with "
               "train/<class>/ and test/<class>/, a .tar of such a tree, or the URI of such a "
               ".tar (s3://bucket/cifar10.tar)")
# torchvision's md5 sums of the original files: a copy in this format must be the original.
TORCHVISION_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


@dataclass(frozen=True)
class Cifar10:
    """All of CIFAR-10 as uint8 NHWC arrays with labels in CIFAR-10's order."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str       # the path it was read from
    kind: str         # torchvision | tree | tar
    checksum: str     # sha256 of the source

    @cached_property
    def _stats(self) -> tuple[np.ndarray, np.ndarray]:
        x = self.train_x.reshape(-1, 3)
        mean = x.mean(axis=0, dtype=np.float64) / 255
        sq = np.einsum("ij,ij->j", x, x, dtype=np.float64) / len(x) / 255**2
        return mean, np.sqrt(sq - mean**2)

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the training images in [0, 1] units (float64)."""
        return self._stats


def cache_dir() -> Path:
    """The user cache folder: $NOISESINK_CACHE, else $XDG_CACHE_HOME/noisesink, else ~/.cache/noisesink."""
    if os.environ.get("NOISESINK_CACHE"):
        return Path(os.environ["NOISESINK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "noisesink"


@contextmanager
def node_lock():
    """Exclusive use of the cache folder across processes (flock: released when the process
    dies). Not reentrant: never nest it."""
    folder = usable_cache_dir()
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def is_uri(source: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def _remote_file(uri: str, where: str):
    """(filesystem, path, info) of the object a data URI names; InputError when it cannot be
    reached or is not one file."""
    from .artifacts import filesystem
    try:
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
    except InputError as e:
        raise InputError(where, e.problem, SOURCE_HELP, uri) from None
    except Exception as e:  # unreachable endpoint, refused credentials
        raise InputError(where, f"cannot reach the data ({type(e).__name__}: {e})", SOURCE_HELP,
                         uri) from None
    if info.type.name == "NotFound":
        raise InputError(where, "no such object", SOURCE_HELP, uri)
    if info.type.name != "File":
        raise InputError(where, "names a folder; a URI must name one .tar", SOURCE_HELP, uri)
    return fs, path, info


def fetch(uri: str, where: str = "data_root") -> tuple[Path, bool]:
    """The local copy of the object at `uri` in the cache folder, and whether this call fetched
    it. One fetch per node and object version (its size and modification time): the other
    processes wait on the lock and reuse the copy."""
    fs, path, info = _remote_file(uri, where)
    version = f"{uri}\0{info.size}\0{info.mtime_ns}"
    key = hashlib.sha256(version.encode()).hexdigest()[:16]
    dest = cache_dir() / "sources" / f"{key}-{PurePosixPath(path).name}"
    with node_lock():
        if dest.exists():
            return dest, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f"{dest.name}.part{os.getpid()}")
        with fs.open_input_stream(path) as src, open(part, "wb") as out:
            for block in iter(lambda: src.read(1 << 22), b""):
                out.write(block)
        os.replace(part, dest)  # complete or absent, even if this process dies mid-copy
    return dest, True


# ---------------------------------------------------------------- finding the source

def resolve_source(data_root: str | None) -> tuple[str, Path | str] | None:
    """(kind, path) of the CIFAR-10 copy to use, or None when torchvision must download it; for
    a URI ("uri", the URI), checked to name one object but not fetched."""
    where = "data_root"
    if data_root is None and os.environ.get("NOISESINK_DATA"):
        data_root, where = os.environ["NOISESINK_DATA"], "NOISESINK_DATA"
    if data_root is None:
        cached = cache_dir() / "torchvision" / "cifar-10-batches-py"
        return ("torchvision", cached) if (cached / "test_batch").exists() else None
    if is_uri(data_root) and not data_root.startswith("file://"):
        _remote_file(data_root, where)
        return "uri", data_root
    path = Path(data_root.removeprefix("file://")).expanduser()
    if not path.exists():
        raise InputError(where, "no such file or folder", SOURCE_HELP, str(path))
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise InputError(where, "file is not a tar archive", SOURCE_HELP, str(path))
        return "tar", path
    if (path / "cifar-10-batches-py").is_dir():
        return "torchvision", path / "cifar-10-batches-py"
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return "torchvision", path
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "tree", path
    raise InputError(where, "folder holds no CIFAR-10 copy I can read", SOURCE_HELP, str(path))


def check_source(data_root: str | None) -> str:
    """A short description of the source that would be used; raises InputError when none."""
    found = resolve_source(data_root)
    if found is None:
        return f"torchvision download into {cache_dir() / 'torchvision'}"
    return f"{found[0]} {found[1]}"


# ---------------------------------------------------------------- checksums

def _sha256_files(paths: list[Path], names: list[str]) -> str:
    h = hashlib.sha256()
    for path, name in zip(paths, names):
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def source_checksum(kind: str, path: Path) -> str:
    if kind == "tar":  # the plain sha256 of the file, comparable with a published one
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if kind == "torchvision":
        names = sorted(p.name for p in path.iterdir() if p.is_file())
        return _sha256_files([path / n for n in names], names)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return _sha256_files(files, [p.relative_to(path).as_posix() for p in files])


# ---------------------------------------------------------------- decoding

def _decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(name, f"cannot decode image ({e})",
                         "JPEG/PNG images of 32x32 pixels") from None
    if arr.shape != (32, 32, 3):
        raise InputError(name, f"image is {arr.shape[1]}x{arr.shape[0]}, CIFAR-10 images are 32x32",
                         "32x32 RGB images")
    return arr


def _split_member(parts: tuple[str, ...], where: str) -> tuple[str, str] | None:
    """(split, class) of a file at `[top/]split/class/file`, None for files outside the tree."""
    if len(parts) >= 3 and parts[-3] in ("train", "test") and len(parts) <= 4:
        return parts[-3], parts[-2]
    if any(p in ("train", "test") for p in parts[:-1]):
        raise InputError(where, "file is not at train/<class>/<image> or test/<class>/<image>",
                         "an image-folder tree train/<class>/*, test/<class>/*")
    return None


def _collect(entries, source: str) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """Group (posix name, bytes-getter) entries into split -> class -> [(name, bytes)]."""
    tree: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for name, get_bytes in entries:
        parts = PurePosixPath(name).parts
        if any(p.startswith(".") for p in parts):
            continue  # hidden files (.DS_Store, ._foo) are not images
        where = f"{source}:{name}"
        located = _split_member(parts, where)
        if located is None:
            continue  # README and the like beside the tree
        split, cls = located
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(where, "not an image file", ", ".join(sorted(IMAGE_SUFFIXES)))
        tree[split].setdefault(cls, []).append((name, get_bytes))
    return tree


def _check_classes(tree, source: str) -> None:
    for split in ("train", "test"):
        found = set(tree[split])
        missing = [c for c in CIFAR10_CLASSES if c not in found]
        extra = sorted(found - set(CIFAR10_CLASSES))
        if extra:
            raise InputError(f"{source}: {split}/{extra[0]}", "unknown class folder",
                             ", ".join(CIFAR10_CLASSES))
        if missing:
            raise InputError(f"{source}: {split}/", f"missing class folder(s) {', '.join(missing)}",
                             "one folder per CIFAR-10 class: " + ", ".join(CIFAR10_CLASSES))


def _stack(tree, source: str) -> tuple[np.ndarray, ...]:
    _check_classes(tree, source)
    out = []
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            for name, get_bytes in sorted(tree[split][cls], key=lambda e: e[0]):
                xs.append(_decode_image(get_bytes(), f"{source}:{name}"))
                ys.append(label)
        out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return tuple(out)


def _read_tar(path: Path) -> tuple[np.ndarray, ...]:
    try:
        return _read_tar_members(path)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # truncated, corrupt, unreadable
        raise InputError(str(path), f"cannot read the archive, it is truncated or corrupt ({type(e).__name__}: "
                         f"{e})", "a complete .tar of the image-folder tree") from None


def _read_tar_members(path: Path) -> tuple[np.ndarray, ...]:
    with tarfile.open(path, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            try:  # the stdlib's own safety rules ('data' filter); nothing is written to disk
                tarfile.data_filter(m, "/nonexistent-extraction-root")
            except tarfile.FilterError as e:
                raise InputError(f"{path}:{m.name}", f"unsafe tar member refused ({type(e).__name__})",
                                 "regular files inside the archive's own tree") from None
        files = [m for m in members if m.isfile()]
        entries = [(m.name, (lambda m=m: tf.extractfile(m).read())) for m in files]
        return _stack(_collect(entries, str(path)), str(path))


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(str(path), f"cannot be read ({e.strerror})", "readable image files") from None


def _read_tree(path: Path) -> tuple[np.ndarray, ...]:
    root = path.resolve()
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            if not p.resolve().is_relative_to(root):
                raise InputError(str(p), "link points outside the data folder", "regular files")
            entries.append((p.relative_to(path).as_posix(), partial(_read_file, p)))
    return _stack(_collect(entries, str(path)), str(path))


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles; a pickle can run any code when loaded. Only the
    objects such a batch is made of (a dict of bytes, lists and numpy arrays) may be built."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to build {module}.{name}")
        return super().find_class(module, name)


def _read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 NHWC images, int64 labels), checked; any flaw names the file."""
    allowed = "an original CIFAR-10 python batch (data_batch_1..5, test_batch)"
    try:
        with open(file, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError,
            AttributeError, ImportError) as e:
        raise InputError(str(file), f"not a readable CIFAR-10 batch, truncated or corrupt "
                         f"({type(e).__name__}: {e})", allowed) from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise InputError(str(file), f"rows of {data.shape[1:]} {data.dtype} values, CIFAR-10 has 3072 "
                         "uint8 values (32x32x3)", allowed)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or (
            len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise InputError(str(file), f"{len(data)} images but labels of shape {labels.shape} "
                         f"({labels.dtype}) outside 0..9", allowed)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _read_torchvision(path: Path) -> tuple[np.ndarray, ...]:
    out = []
    for _split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        xs, ys = [], []
        for name in names:
            file = path / name
            if not file.exists():
                raise InputError(str(file), "missing file of the torchvision CIFAR-10 format",
                                 "data_batch_1..5 and test_batch from cifar-10-python.tar.gz")
            x, y = _read_batch(file)
            xs.append(x)
            ys.append(y)
        out += [np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)]
    return tuple(out)


def _check_torchvision_md5(path: Path) -> None:
    for name, md5 in TORCHVISION_MD5.items():
        file = path / name
        if file.exists() and hashlib.md5(file.read_bytes()).hexdigest() != md5:
            raise InputError(str(file), "md5 differs from the original CIFAR-10 file (corrupt or "
                             "modified)", "the original files, or data_verify: shapes for a "
                             "deliberate partial copy")


def _download(root: Path) -> Path:
    """torchvision's download into root/cifar-10-batches-py. Call it under node_lock(): the
    archive is unpacked beside the final folder and renamed into place, so a reader never sees a
    half-written copy."""
    final = root / "cifar-10-batches-py"
    if (final / "test_batch").exists():  # another process finished it while this one waited
        return final
    for stale in root.glob(".download*"):  # left by a process killed mid-download (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".download{os.getpid()}"
    try:
        from torchvision.datasets import CIFAR10
        CIFAR10(str(staging), train=True, download=True)
        os.replace(staging / "cifar-10-batches-py", final)
    except Exception as e:  # offline, proxy, disk: all end the same way for the user
        raise InputError("data source", f"no local CIFAR-10 copy was given and torchvision's "
                         f"download failed ({type(e).__name__}: {e})", SOURCE_HELP) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# ---------------------------------------------------------------- the cached arrays

def verify_counts(arrays: tuple[np.ndarray, ...], source: str) -> None:
    """Check that the arrays are all of CIFAR-10: 5000 train and 1000 test images per class."""
    for split, y in (("train", arrays[1]), ("test", arrays[3])):
        counts = np.bincount(y, minlength=10)
        wrong = [f"{CIFAR10_CLASSES[c]}: {counts[c]}" for c in range(10) if counts[c] != FULL_COUNTS[split]]
        if wrong:
            raise InputError(source, f"{split} split is not all of CIFAR-10, it holds "
                             f"{', '.join(wrong)} images (expected {FULL_COUNTS[split]} per class, "
                             f"{10 * FULL_COUNTS[split]} in all)",
                             "the complete dataset, or data_verify: shapes for a partial copy")


def _decode(kind: str, path: Path) -> tuple[np.ndarray, ...]:
    if kind == "tar":
        return _read_tar(path)
    if kind == "tree":
        return _read_tree(path)
    return _read_torchvision(path)


def usable_cache_dir() -> Path:
    """cache_dir(), created; a path that is a file, lies under one or is not writable is an
    InputError naming it and how to choose another."""
    folder = cache_dir()
    where = "NOISESINK_CACHE" if os.environ.get("NOISESINK_CACHE") else "cache folder"
    allowed = "a writable folder; set NOISESINK_CACHE to choose another"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(where, "is a file, or lies under a file, not a folder", allowed, str(folder)) from None
    except OSError as e:
        raise InputError(where, f"cannot be created ({e.strerror})", allowed, str(folder)) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(where, "is not writable for this user", allowed, str(folder))
    return folder


def _read_cache(file: Path) -> tuple[np.ndarray, ...] | None:
    try:
        with np.load(file) as z:
            return z["train_x"], z["train_y"], z["test_x"], z["test_y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        print(f"WARNING: decoded-data cache {file} unreadable ({type(e).__name__}: {e}); decoding the source again")
        return None


def _write_cache(file: Path, arrays: tuple[np.ndarray, ...]) -> None:
    tmp = file.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, train_x=arrays[0], train_y=arrays[1], test_x=arrays[2], test_y=arrays[3])
        os.replace(tmp, file)
    except OSError as e:  # a full disk, a quota: the cache is ours, the folder the user's to choose
        tmp.unlink(missing_ok=True)
        raise InputError("cache folder", f"cannot write the decoded data ({e.strerror})",
                         "a folder with about 200 MB free; set NOISESINK_CACHE to choose another",
                         str(file.parent)) from None


@lru_cache(maxsize=2)
def load_cifar10(data_root: str | None = None, verify: str = "full") -> Cifar10:
    """All of CIFAR-10, decoded once per source and cached; verified as asked.

    verify: "full" requires the complete dataset (10 classes x 5000 + 1000 images of 32x32x3);
    "shapes" checks the classes and image size only (test fixtures, deliberate partial copies).
    """
    found = resolve_source(data_root)
    if found is None:
        with node_lock():
            found = ("torchvision", _download(cache_dir() / "torchvision"))
    kind, path = found
    source = str(path)  # what trial.json records: the URI, not this node's copy of it
    if kind == "uri":
        path, _ = fetch(source, "NOISESINK_DATA" if data_root is None else "data_root")
        if not tarfile.is_tarfile(path):
            raise InputError(source, "the object is not a tar archive", SOURCE_HELP)
        kind = "tar"
    if kind == "torchvision" and verify == "full":
        _check_torchvision_md5(path)
    checksum = source_checksum(kind, path)
    file = cache_dir() / f"cifar10-v{CACHE_FORMAT}-{checksum[:24]}.npz"
    with node_lock():  # one process decodes, the others wait and reuse
        arrays = _read_cache(file) if file.exists() else None
        if arrays is None:  # absent, or unreadable (a disk error, a copy cut short): decode again
            arrays = _decode(kind, path)
            _write_cache(file, arrays)
    if verify == "full":
        verify_counts(arrays, source)
    return Cifar10(*arrays, source=source, kind=kind, checksum=checksum)
