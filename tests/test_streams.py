"""The table of random streams: no two (purpose, seed) streams coincide, each is a pure function of
its inputs, the fused trainer draws what separate trials draw, and nothing in study/ seeds a
generator except through study/streams.py."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import ROOT
from study import streams
from study.noise import NOISE_FAMILIES

SEEDS = range(1000)


def every_stream(seeds=SEEDS):
    """(purpose, seed, name) for every stream a study of these seeds (and noise seeds) can draw."""
    for purpose in streams.STREAMS:
        names = sorted(NOISE_FAMILIES) if purpose == "noise_bank" else [None]
        for seed in seeds:
            for name in names:
                yield purpose, seed, name


def test_codes_are_distinct_and_every_stream_names_its_key():
    codes = [s.code for s in streams.STREAMS.values()]
    assert len(set(codes)) == len(codes)
    assert {s.key for s in streams.STREAMS.values()} == {"seed", "noise_seed"}


def test_no_two_streams_of_seeds_0_to_999_collide():
    """Over seeds (and noise seeds) 0..999, every purpose and every noise family: all 63-bit seeds
    differ, and so do the first draws (a second, independent witness of distinct states)."""
    keys = list(every_stream())
    seeds = [streams.int_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys), "two streams share a torch seed"
    first = [tuple(streams.seed_sequence(*k).generate_state(4)) for k in keys]
    assert len(set(first)) == len(keys), "two streams share a state"


def test_the_old_offsets_collided_and_the_table_does_not():
    """The bug the table fixes: seed 0's data order was torch seed 0*1_000_003+1 = 1, seed 1's
    weight init manual_seed(1): one stream under two names."""
    assert 0 * 1_000_003 + 1 == 1
    assert streams.int_seed("train", 0) != streams.int_seed("init", 1)
    assert streams.int_seed("train_subset", 3) != streams.int_seed("test_subset", 3)


@pytest.mark.parametrize("purpose", sorted(streams.STREAMS))
def test_a_stream_is_a_pure_function_of_purpose_and_seed(purpose):
    name = "gaussian" if purpose == "noise_bank" else None
    a = streams.numpy_rng(purpose, 7, name).random(5)
    b = streams.numpy_rng(purpose, 7, name).random(5)
    c = streams.numpy_rng(purpose, 8, name).random(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ta = torch.rand(5, generator=streams.torch_generator(purpose, 7, name=name))
    tb = torch.rand(5, generator=streams.torch_generator(purpose, 7, name=name))
    assert torch.equal(ta, tb)


def test_negative_or_non_integer_seeds_are_refused():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="whole number"):
            streams.seed_sequence("train", bad)


def test_model_init_uses_its_stream_and_leaves_the_global_generator_alone():
    from study.models import build_model
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("small_cnn", 3, seed=5)
    assert torch.equal(torch.rand(3), expected)  # the global generator did not move
    b = build_model("small_cnn", 3, seed=5)
    c = build_model("small_cnn", 3, seed=6)
    wa, wb, wc = (m.features[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_fused_and_separate_training_draw_the_same_stream(tiny_config):
    """The fused trainer gives each seed the very generator its separate Trainer would have."""
    from study.fused import FusedTrainer
    from study.train import Trainer
    from study.trial import new_model, setup
    setups = [setup(tiny_config(seed=s)) for s in (0, 3)]
    fused = FusedTrainer(setups, [new_model(s) for s in setups])
    for s, gen in zip(setups, fused.gens):
        alone = Trainer(new_model(s), s.task.train_x, s.task.train_y, s.cfg, s.device, s.normalize, s.precision)
        assert torch.equal(alone.gen.get_state(), gen.get_state())


def test_nothing_in_study_seeds_a_generator_outside_the_table():
    pattern = re.compile(r"manual_seed\(|default_rng\(|SeedSequence\(|np\.random\.seed\(|random\.seed\(")
    offenders = [f"{path.name}:{i}" for path in sorted((ROOT / "study").glob("*.py")) if path.name != "streams.py"
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == [], f"seed through study/streams.py instead: {offenders}"
