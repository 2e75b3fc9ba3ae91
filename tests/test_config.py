import pytest

from e2emfd.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


def test_defaults_and_overrides():
    cfg = load_config(
        None, ["model.backbone.depth=18", "train.lr=0.001", "data.scale_jitter=[0.8,1.2]"]
    )
    assert cfg.model.backbone.depth == 18 and cfg.train.lr == 0.001
    assert cfg.data.scale_jitter == [0.8, 1.2]
    assert isinstance(cfg, Config)


def test_int_and_exponent_literals_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model.backbone.dept'.*'model.backbone.depth'"
    ):
        load_config(None, ["model.backbone.dept=18"])
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_iter: 5\n")
    with pytest.raises(ConfigError, match=r"'train.max_iter'.*did you mean 'train.max_iters'"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.max_iters: expected an integer, got 'ten'"):
        load_config(None, ["train.max_iters=ten"])
    with pytest.raises(ConfigError, match=r"model.fusion.enabled: expected true/false"):
        load_config(None, ["model.fusion.enabled=3"])
    with pytest.raises(ConfigError, match=r"'model.backbone.depth' is a value"):
        load_config(None, ["model.backbone.depth.x=1"])


def test_base_inheritance_and_roundtrip(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\ntrain:\n  lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  max_iters: 7\n")
    cfg = load_config(tmp_path / "child.yaml", ["seed=4"])
    assert (cfg.seed, cfg.train.lr, cfg.train.max_iters) == (4, 0.5, 7)
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(saved) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
