"""Trainer pieces that need no process group: LR schedule, weight-decay groups, DeepSpeed dict, metrics log."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from halotrans.config import ConfigError, load_config
from halotrans.train.ds_config import deepspeed_config
from halotrans.train.logbook import MetricsLog
from halotrans.train.optim import lr_at, param_groups


def test_lr_warmup_then_cosine():
    kw = dict(lr=1e-3, min_lr=1e-5, warmup=4, total=14)
    assert [lr_at(s, **kw) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(4, **kw) == pytest.approx(1e-3)
    assert lr_at(9, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way: cos(π/2) = 0
    assert lr_at(14, **kw) == pytest.approx(1e-5)
    assert lr_at(100, **kw) == pytest.approx(1e-5)
    assert lr_at(6, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.2)))
    assert lr_at(0, lr=1e-3, min_lr=0.0, warmup=0, total=10) == pytest.approx(1e-3)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, 8, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv3d(2, 4, 3, bias=False)
        self.inorm = nn.InstanceNorm3d(4, affine=True)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    m = _Block()
    decay, plain = param_groups(m, weight_decay=0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "proj.weight"]
    assert sorted(names[id(p)] for p in plain["params"]) == [
        "inorm.bias", "inorm.weight", "norm.bias", "norm.weight", "pos_embed", "proj.bias"]


def test_deepspeed_dict_from_train_config():
    cfg = load_config(None, ["train.zero_stage=2", "train.grad_accum=3", "train.grad_clip=0.5",
                             "train.torch_adam=false", "train.bf16=true", "train.weight_decay=0.01"])
    d = deepspeed_config(cfg.train, micro_batch_size=4)
    assert d["train_micro_batch_size_per_gpu"] == 4 and d["gradient_accumulation_steps"] == 3
    assert d["gradient_clipping"] == 0.5 and d["zero_optimization"] == {"stage": 2}
    assert d["bf16"] == {"enabled": True}
    assert d["optimizer"]["type"] == "AdamW"
    assert d["optimizer"]["params"]["torch_adam"] is False and d["optimizer"]["params"]["weight_decay"] == 0.01
    assert d["optimizer"]["params"]["lr"] == pytest.approx(cfg.train.lr / cfg.train.warmup_steps)


def test_train_config_validation():
    with pytest.raises(ConfigError, match="bf16 needs zero_stage"):
        load_config(None, ["train.bf16=true", "train.zero_stage=0"])
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(None, ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match="min_lr"):
        load_config(None, ["train.lr=1e-4", "train.min_lr=1e-3"])
    with pytest.raises(ConfigError, match="time_budget_s"):
        load_config(None, ["train.time_budget_s=0"])
    with pytest.raises(ConfigError, match="lrr"):
        load_config(None, ["train.lrr=1"])


def test_every_segment_config_loads():
    from halotrans.config import CONFIG_DIR

    files = sorted((CONFIG_DIR / "segment").glob("*.yaml"))
    got = {f.stem: load_config(f) for f in files}
    assert {got[n].data.inputs for n in ("vipr_delta", "copra_delta")} == {("delta",)}
    assert {got[n].data.inputs for n in ("vipr_T", "copra_T")} == {("T",)}
    assert {got[n].data.inputs for n in ("vipr", "copra")} == {("delta", "T")}
    assert got["vipr_7class"].data.n_classes == got["copra_7class"].data.n_classes == 7
    assert got["vipr"].data.n_classes == 5
    assert got["tiny_vipr"].data.crop == got["tiny_copra"].data.crop == 32
    assert got["tiny_copra"].model.name == "copra" and got["vipr"].model.name == "vipr"
    run_dirs = [c.train.out_dir for n, c in got.items() if not n.endswith("base")]
    assert len(run_dirs) == len(set(run_dirs))  # no two configs write the same run directory


def test_metrics_log_resume_drops_later_and_torn_rows(tmp_path):
    log = MetricsLog(tmp_path, ["loss", "val_acc"], resume_step=None)
    for step in range(1, 6):
        log.write(step, {"loss": 1.0 / step} | ({"val_acc": 0.5} if step == 2 else {}))
    log.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("6,0.16")  # a killed run's half-written line
    log = MetricsLog(tmp_path, ["loss", "val_acc"], resume_step=3)
    log.write(4, {"loss": 0.2})
    log.close()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[2]["loss"]) == 1.0 / 3 and rows[1]["val_acc"] == "0.5" and rows[3]["loss"] == "0.2"


@pytest.mark.parametrize("task, change, refused", [
    ("segment", "data.crop=48", True),
    ("segment", "train.lr=1e-3", False),
    ("jepa", "jepa.mask_targets=7", True),
    ("jepa", "lightcone.los_multiple=5", True),
    ("jepa", "lightcone.workers=7", False),
    ("regress", "skatr.head_hidden=17", True),
    ("regress", "skatr.head_input=whiten", True),
    ("npe", "skatr.flow_bins=3", True),
    ("npe", "skatr.posterior_samples=9", False),
])
def test_resume_compares_the_keys_each_task_declares(task, change, refused):
    """A resumed run must keep the settings that fix its task's network and inputs (``Task.model_keys``),
    SKATR's ``jepa.*`` and ``lightcone.*`` loading keys included; other keys may change."""
    from halotrans.train.checkpoint import check_same_model
    from halotrans.train.registry import TASKS

    saved = load_config(None, [f"train.task={task}"])
    cfg = load_config(None, [f"train.task={task}", change])
    keys = TASKS.get(task).model_keys
    if refused:
        with pytest.raises(ConfigError, match=change.split("=")[0].split(".")[0]):
            check_same_model(saved, cfg, "run/config.yaml", keys)
    else:
        check_same_model(saved, cfg, "run/config.yaml", keys)
    with pytest.raises(ConfigError, match="train.task"):
        check_same_model(saved, load_config(None, ["train.task=segment" if task != "segment" else "train.task=jepa"]),
                         "run/config.yaml", keys)
