from __future__ import annotations

import pytest

from atlas.config import load_config, preset_names
from atlas.errors import AtlasInputError


def test_presets_load_and_differ():
    names = preset_names()
    assert {"fast", "default", "quality", "lna", "codef"} <= set(names)
    cfgs = {n: load_config(n) for n in names}
    assert cfgs["codef"].model.num_foregrounds == 0
    assert cfgs["fast"].train.iters < cfgs["quality"].train.iters


def test_overrides_are_typed():
    cfg = load_config("fast", ["train.iters=12", "loss.flow=1", "model.encoding_backend=torch"])
    assert cfg.train.iters == 12 and cfg.loss.flow == 1.0 and isinstance(cfg.loss.flow, float)
    for bad, match in [("train.nope=1", "unknown config key"), ("train.iters=abc", "expects int"),
                       ("iters", "key=value"), ("train=3", "is a section")]:
        with pytest.raises(AtlasInputError, match=match):
            load_config("fast", [bad])
    with pytest.raises(AtlasInputError, match="unknown preset"):
        load_config("turbo")


def test_yaml_file_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  iters: 7\n")
    assert load_config(p).train.iters == 7
    p.write_text("train: [1, 2\n")
    with pytest.raises(AtlasInputError, match="not valid YAML"):
        load_config(p)
