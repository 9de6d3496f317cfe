from __future__ import annotations

import dataclasses

import pytest

from atlas.config import FitConfig, load_config, preset_names
from atlas.errors import AtlasInputError


def test_presets_load_and_differ():
    names = preset_names()
    assert {"fast", "default", "quality", "lna", "codef"} <= set(names)
    cfgs = {n: load_config(n) for n in names}
    assert cfgs["codef"].model.num_foregrounds == 0
    assert cfgs["fast"].train.iters < cfgs["quality"].train.iters


def test_overrides_are_typed():
    cfg = load_config("fast", ["train.iters=12", "loss.flow=1", "model.encoding_backend=torch", "loss.rigidity=5e-4"])
    assert cfg.train.iters == 12 and cfg.loss.flow == 1.0 and isinstance(cfg.loss.flow, float)
    assert cfg.loss.rigidity == 5e-4  # YAML 1.1 reads 5e-4 (no dot) as a string
    for bad, match in [("train.nope=1", "unknown config key"), ("train.iters=abc", "expects int"), ("loss.flow=abc", "expects float"),
                       ("iters", "key=value"), ("train=3", "is a section")]:
        with pytest.raises(AtlasInputError, match=match):
            load_config("fast", [bad])
    with pytest.raises(AtlasInputError, match="unknown preset"):
        load_config("turbo")


@pytest.mark.parametrize("bad, match", [
    ("train.iters=0", "train.iters must be >= 1"),
    ("train.batch=-5", "train.batch must be >= 16"),
    ("train.eval_every=0", "must be >= 1"),
    ("loss.flow=-0.1", "loss.flow must be >= 0"),
    ("loss.recon=.nan", "loss.recon must be >= 0"),
    ("loss.mask_anneal=1.5", "<= 1"),
    ("model.num_foregrounds=9", "<= 8"),
    ("model.log2_table_size=30", "<= 24"),
    ("model.colour_density=0", "must be > 0"),
    ("model.encoding_backend=gpu", "must be one of auto, cuda"),
    ("preprocess.flow=farneback", "must be one of auto, raft, dis"),
])
def test_out_of_range_values_are_one_line_errors(bad, match):
    with pytest.raises(AtlasInputError, match=match):
        load_config("fast", [bad])


def test_limits_are_inclusive_where_documented():
    cfg = load_config("fast", ["model.num_foregrounds=0", "model.num_foregrounds=8", "loss.flow=0", "loss.mask_anneal=1",
                               "train.batch=16", "model.log2_table_size=24"])
    assert (cfg.model.num_foregrounds, cfg.loss.flow, cfg.train.batch) == (8, 0.0, 16)


def test_every_choice_can_be_set():
    """Each allowed value of every field with choices survives `--set` (parsed as YAML,
    where a choice named off, on, yes or no would arrive as a boolean)."""
    cfg = FitConfig()
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            for value in f.metadata.get("choices", ()):
                key = f"{section.name}.{f.name}"
                assert getattr(getattr(load_config("fast", [f"{key}={value}"]), section.name), f.name) == value, key


def test_yaml_file_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  iters: 7\n")
    assert load_config(p).train.iters == 7
    p.write_text("train: [1, 2\n")
    with pytest.raises(AtlasInputError, match="not valid YAML"):
        load_config(p)
