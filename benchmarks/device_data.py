"""Carry CIFAR-10 to a lent GPU machine that cannot download it.

The device tool carries at most 64 MiB with the working tree; the shared JPEG tar is 88 MiB,
most of it tar headers and padding around 60,000 small files. `pack` keeps only the JPEG bytes
(about 55 MB) in one .npz; `unpack` rebuilds an equivalent image-folder tar on the device, which
`NOISESINK_DATA` then points at (the members' bytes, names and order are the tar's own).

    python benchmarks/device_data.py pack ../shared/data/cifar10-jpg.tar .device/cifar.npz   # here
    python3 benchmarks/device_data.py unpack .device/cifar.npz /tmp/cifar10.tar              # on the device
"""
from __future__ import annotations

import io
import sys
import tarfile

import numpy as np


def pack(tar_path: str, npz_path: str) -> None:
    names, chunks = [], []
    with tarfile.open(tar_path) as tf:
        for member in tf:
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                names.append(member.name.encode())
                chunks.append(np.frombuffer(tf.extractfile(member).read(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    np.savez(npz_path, blob=np.concatenate(chunks), offsets=offsets, names=np.array(names))
    print(f"packed {len(names)} images, {offsets[-1] / 1e6:.1f} MB, into {npz_path}")


def unpack(npz_path: str, tar_path: str) -> None:
    z = np.load(npz_path)
    blob, offsets, names = z["blob"], z["offsets"], z["names"]
    with tarfile.open(tar_path, "w") as tf:
        for i, name in enumerate(names):
            data = blob[offsets[i]:offsets[i + 1]].tobytes()
            info = tarfile.TarInfo(name.decode())
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    print(f"unpacked {len(names)} images into {tar_path}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    {"pack": pack, "unpack": unpack}[sys.argv[1]](sys.argv[2], sys.argv[3])
