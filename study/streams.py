"""Every random stream of a trial, in one table: purpose -> the config key that seeds it.

A stream is derived from (purpose, the seed's value[, a name such as a noise family]) through
numpy's SeedSequence, which hashes its whole input: two different triples give unrelated streams,
so seed 0's data order is not seed 1's weight init (as `seed * 1_000_003 + stream` and
`manual_seed(seed)` once made it), and a test subset drawn from noise_seed 3 is not a train
subset drawn from seed 3. tests/test_streams.py checks that no two streams of seeds 0..999
coincide. Adding a purpose never moves another's numbers; nothing in study/ seeds a generator
except through this module (a test greps for it).

`seed` streams differ between the trials of a study (they are the replication); `noise_seed`
streams are the same in every trial of a study, so all trials probe the very same images.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Stream:
    key: str        # the config key whose value seeds it: seed or noise_seed
    code: int       # fixed forever: changing it changes every result drawn from the stream
    drives: str     # what it draws


STREAMS: dict[str, Stream] = {
    "init": Stream("seed", 1, "the model's initial weights (torch's global generator, forked)"),
    "train": Stream("seed", 2, "data order, augmentation and the noise of training interventions: one "
                    "generator on the training device, its state saved in each checkpoint"),
    "train_subset": Stream("seed", 3, "which training images a train_subset keeps"),
    "class_intervention": Stream("seed", 4, "which target images a class intervention changes, and how"),
    "test_subset": Stream("noise_seed", 5, "which test images a test_subset keeps, and the held-out "
                          "classes' images at the same size"),
    "clutter_sample": Stream("noise_seed", 6, "the training images per class for the clutter measures "
                             "and for fitting the OOD detectors"),
    "noise_bank": Stream("noise_seed", 7, "one bank per noise family, keyed also by the family's name "
                         "(adding a family moves no other bank); the trajectory images are the first "
                         "n_trajectory of the gaussian bank"),
    "frequency": Stream("noise_seed", 8, "the white noise under every band-limited frequency probe"),
    "noise_class_reference": Stream("noise_seed", 9, "training-like noise whose mean feature stands for "
                                    "the extra class of a noise_class model"),
    "amplitude": Stream("noise_seed", 10, "the white noise of the amplitude probe (the same draw scaled to "
                        "every amplitude)"),
    "batchnorm": Stream("noise_seed", 11, "the gaussian images of the BatchNorm probe: the first n_bn are "
                        "probed, the next n_bn re-estimate the running statistics"),
    "bias_deal": Stream("seed", 12, "the random deals of the head's biases to the classes (the head-bias "
                        "counterfactual) and the tie-break of their rank, keyed by the noise family"),
}


def _name_code(name: str) -> int:
    """A stable 64-bit number for a name (a noise family), the same in every process."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def seed_sequence(purpose: str, value: int, name: str | None = None) -> np.random.SeedSequence:
    """The root of stream `purpose` for the seed value `value` (and `name`, for per-name streams).

    The value is SeedSequence's entropy, the purpose (and name) its spawn key: numpy pads the
    entropy to a fixed width before appending the key, so (value, purpose) pairs cannot alias."""
    stream = STREAMS[purpose]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"stream {purpose!r}: the {stream.key} must be a whole number >= 0, got {value!r}")
    key = (stream.code,) if name is None else (stream.code, _name_code(name))
    return np.random.SeedSequence(int(value), spawn_key=key)


def int_seed(purpose: str, value: int, name: str | None = None) -> int:
    """A 63-bit integer seed of the stream (for torch's manual_seed)."""
    return int(seed_sequence(purpose, value, name).generate_state(1, np.uint64)[0] >> np.uint64(1))


def numpy_rng(purpose: str, value: int, name: str | None = None) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(purpose, value, name))


def torch_generator(purpose: str, value: int, device: torch.device | str = "cpu",
                    name: str | None = None) -> torch.Generator:
    """A torch generator of the stream on the device that consumes it (the same seed gives other
    numbers on CUDA than on the CPU: each device has its own generator algorithm)."""
    return torch.Generator(device=device).manual_seed(int_seed(purpose, value, name))


@contextmanager
def global_torch(purpose: str, value: int):
    """Torch's global CPU generator seeded from the stream for the block (for code that draws from
    it, such as layer initialisation), restored afterwards: the block moves no other stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int_seed(purpose, value))
        yield

