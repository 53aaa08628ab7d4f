"""Config loading: strict keys, type checks, base files, overrides."""

from __future__ import annotations

import pytest
import yaml

from halotrans.config import ConfigError, config_to_dict, load_config, parse_override, save_config
from tests.helpers import halotrans_cli


def write(tmp_path, name, d):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=3e-4", "data.inputs=[delta]", "sim.n_grid=32"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.inputs == ("delta",)
    assert cfg.sim.n_grid == 32


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "bad.yaml", {"train": {"lr": 1e-3, "lrr": 2}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "lrr" in str(e.value) and "bad.yaml" in str(e.value)


def test_unknown_section(tmp_path):
    p = write(tmp_path, "bad.yaml", {"trian": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match="trian"):
        load_config(p)


def test_wrong_type(tmp_path):
    p = write(tmp_path, "bad.yaml", {"sim": {"n_grid": "sixty-four"}})
    with pytest.raises(ConfigError, match=r"sim\.n_grid"):
        load_config(p)


def test_validation_in_dataclass(tmp_path):
    with pytest.raises(ConfigError, match="lpt_order"):
        load_config(None, ["sim.lpt_order=3"])


def test_base_and_roundtrip(tmp_path):
    write(tmp_path, "base.yaml", {"sim": {"n_grid": 32, "box_size": 32.0}, "train": {"steps": 5}})
    child = write(tmp_path, "child.yaml", {"base": "base.yaml", "train": {"steps": 7}})
    cfg = load_config(child)
    assert (cfg.sim.n_grid, cfg.sim.box_size, cfg.train.steps) == (32, 32.0, 7)
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_override_parsing():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=3e-4") == ("a.b", 3e-4)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override('a.b="7"') == ("a.b", "7")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_cli_help_and_bad_config(tmp_path):
    out = halotrans_cli("--help").stdout
    assert "simulate" in out and "train" in out
    p = write(tmp_path, "bad.yaml", {"sim": {"bogus": 1}})
    proc = halotrans_cli("simulate", "--config", p, "--seeds", "0", check=False)
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and "bad.yaml" in proc.stderr
