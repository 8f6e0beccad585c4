"""Each short-schedule ingredient of export/recipe.py does what its switch says, and bf16 follows the
hardware."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from eluserve.cli import build_parser
from eluserve.export import train_speed
from eluserve.export.ablation import BASELINE, VARIANTS, variant_config, write_table
from eluserve.export.cli import train_config
from eluserve.export.config import RECIPES, TrainConfig
from eluserve.export.recipe import (
    LOOKAHEAD_PEAK,
    Lookahead,
    configure_batch_norm,
    dirac_init_,
    flip_schedule,
    native_bf16,
    param_groups,
    resolve_amp,
)
from eluserve.export.train import learning_rate, train
from eluserve.export.zoo import create_model

CPU = torch.device("cpu")


def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_torch_still_reports_the_cpu_bf16_features() -> None:
    """`native_bf16` reads two private torch probes; this fails when a torch upgrade drops them."""
    assert isinstance(torch.cpu._is_avx512_bf16_supported(), bool)
    assert isinstance(torch.cpu._is_amx_tile_supported(), bool)


def test_autocast_stays_off_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    no_native_bf16(monkeypatch)
    measured: list[bool] = []
    assert not native_bf16(CPU)
    assert resolve_amp(None, CPU, measure=lambda amp: measured.append(amp) or 1.0) is False
    assert measured == []  # emulated bf16 is not even timed
    assert resolve_amp(True, CPU) is True  # asked for explicitly, it is the user's call


def test_autocast_on_a_native_cpu_only_when_it_measures_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_amp(None, CPU, measure=lambda amp: 1.0 if amp else 2.0) is True
    assert resolve_amp(None, CPU, measure=lambda amp: 2.0 if amp else 1.0) is False
    assert resolve_amp(False, CPU, measure=lambda amp: 1.0 if amp else 2.0) is False


def test_a_training_run_records_fp32_where_bf16_is_emulated(
    small_cifar_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's config.json (what the model card reports) says what ran: no autocast here."""
    no_native_bf16(monkeypatch)
    entered: list[bool] = []
    real_autocast = torch.autocast

    def spy(device_type: str, **kwargs: object) -> torch.autocast:
        entered.append(bool(kwargs.get("enabled", True)))
        return real_autocast(device_type, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    config = TrainConfig(
        data=str(small_cifar_zip), out=str(tmp_path), model="elubench_small", batch_size=100,
        val_per_class=10, epochs=1,
    )  # fmt: skip
    train(config)
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["amp"] is False and recorded["channels_last"] is True  # elubench's measured layout
    assert entered and not any(entered)


def test_the_airbench_recipe_is_a_starting_point_that_flags_override(small_cifar_zip: Path) -> None:
    args = build_parser().parse_args(
        ["train", "--data", str(small_cifar_zip), "--out", "x", "--recipe", "airbench", "--lr", "0.5",
         "--no-lookahead"]
    )  # fmt: skip
    config = train_config(args)
    assert config.lr == 0.5 and config.lookahead is False  # the flags win
    assert config.batch_size == RECIPES["airbench"]["batch_size"] and config.flip == "alternating"
    plain = train_config(build_parser().parse_args(["train", "--data", "d", "--out", "x"]))
    assert plain == TrainConfig(data="d", out="x")  # no recipe: the dataclass's defaults


def test_triangular_schedule_runs_start_peak_end() -> None:
    config = TrainConfig(data="d", out="o", lr=2.0, warmup_fraction=0.25, lr_start=0.2, lr_end=0.1)
    assert learning_rate(config, 0, 100) == pytest.approx(0.4)
    assert learning_rate(config, 25, 100) == pytest.approx(2.0)
    assert learning_rate(config, 100, 100) == pytest.approx(0.2)
    classic = TrainConfig(data="d", out="o", lr=1.0, warmup_fraction=0.5)
    assert [learning_rate(classic, s, 10) for s in (0, 5, 10)] == pytest.approx([0.0, 1.0, 0.0])


def test_frozen_norm_scales_and_fast_biases_with_decoupled_decay() -> None:
    net = create_model("elubench_small")
    configure_batch_norm(net, momentum=0.4, freeze_weights=True)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.4 and not m.weight.requires_grad for m in norms)
    weights, norm, biases = param_groups(net, lr=2.0, weight_decay=0.004, bias_lr_scale=64.0, decoupled=True)
    frozen = {id(m.weight) for m in norms}
    assert not frozen & {id(p) for group in (weights, norm, biases) for p in group["params"]}
    assert weights["weight_decay"] == pytest.approx(0.002) and weights["lr_scale"] == 1.0
    assert norm["weight_decay"] == 0.0 and norm["lr_scale"] == 64.0
    assert {id(p) for p in norm["params"]} == {id(m.bias) for m in norms}
    # the whitening stem's bias learns at the plain rate: 64× would throw its whitened input about
    assert [id(p) for p in biases["params"]] == [id(net.whiten.bias)] and biases["lr_scale"] == 1.0
    coupled, _, _ = param_groups(net, lr=2.0, weight_decay=0.004, bias_lr_scale=1.0, decoupled=False)
    assert coupled["weight_decay"] == 0.004


def test_dirac_init_makes_square_convs_the_identity() -> None:
    net = create_model("elubench_small")
    changed = dirac_init_(net, skip=net.whiten)
    assert changed == 6  # every 3×3 conv: two per group
    square = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels)
    x = torch.randn(2, square.in_channels, 8, 8)
    assert torch.allclose(square(x), x)
    assert not torch.equal(net.whiten.weight, torch.zeros_like(net.whiten.weight))  # left alone


def test_lookahead_pulls_the_weights_to_their_average() -> None:
    net = nn.Linear(2, 1, bias=False)
    lookahead = Lookahead(net)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    lookahead.update(net, decay=0.75)
    assert torch.allclose(net.weight, start + 0.25)  # a quarter of the way from the average
    assert torch.equal(lookahead.state_dict()["weight"], net.weight)
    assert Lookahead.decay(0, 100) == 0.0 and Lookahead.decay(100, 100) == pytest.approx(LOOKAHEAD_PEAK)
    assert Lookahead.decay(50, 100) == pytest.approx(LOOKAHEAD_PEAK / 8)


def test_alternating_flips_cover_both_orientations_in_two_epochs() -> None:
    even = flip_schedule(1000, seed=3)
    odd = even ^ True
    assert torch.equal(flip_schedule(1000, seed=3), even)  # the same every epoch and after a resume
    assert bool((even != odd).all()) and 400 < int(even.sum()) < 600


def test_whitening_bias_trains_only_its_epochs(small_cifar_zip: Path, tmp_path: Path) -> None:
    """With whiten_bias_epochs=1 the stem's bias moves in epoch 1 and not after; its weights never."""
    config = TrainConfig(
        data=str(small_cifar_zip), out=str(tmp_path), model="elubench_small", batch_size=100,
        val_per_class=10, epochs=1, whiten_bias_epochs=1, amp=False,
    )  # fmt: skip
    train(config)
    after_one = torch.load(tmp_path / "checkpoint.pt")["model"]
    assert after_one["net.whiten.bias"].abs().sum() > 0  # it starts at zero: epoch 1 trained it
    config.epochs = 3
    train(config)
    after_three = torch.load(tmp_path / "checkpoint.pt")["model"]
    assert torch.equal(after_one["net.whiten.bias"], after_three["net.whiten.bias"])
    assert torch.equal(after_one["net.whiten.weight"], after_three["net.whiten.weight"])
    assert not torch.equal(after_one["net.head.weight"], after_three["net.head.weight"])


def test_ablation_variants_change_one_thing_each(tmp_path: Path) -> None:
    base = variant_config(BASELINE, "data.zip", tmp_path, "elubench94", epochs=3, seed=1)
    assert base.whiten_bias_epochs == 1 and base.epochs == 3 and base.seed == 1  # 3 of 10, scaled
    for name, change in VARIANTS.items():
        config = variant_config(name, "data.zip", tmp_path, "elubench94", epochs=3, seed=1)
        differs = {
            field.name
            for field in dataclasses.fields(TrainConfig)
            if getattr(config, field.name) != getattr(base, field.name)
        }
        assert differs == set(change) | ({"out"} if name != BASELINE else set()), name


def test_ablation_table_ranks_against_the_full_recipe(tmp_path: Path) -> None:
    """The table and plot come from the variants' own run folders; unfinished ones are left out."""
    for name, accuracy in ((BASELINE, 0.90), ("no_lookahead", 0.885), ("random_flip", None)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 120.0}) + "\n")
        if accuracy is not None:
            (run / "summary.json").write_text(json.dumps({"val_accuracy_fp32": accuracy}))
    report = write_table(tmp_path)
    assert [row["variant"] for row in report["rows"]] == [BASELINE, "no_lookahead"]
    assert report["rows"][1]["delta_points"] == pytest.approx(-1.5)
    table = (tmp_path / "ablation.md").read_text()
    assert "| no_lookahead | lookahead=False | 88.50 % | -1.50 | 1 | 2 |" in table
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_train_speed_times_each_setup_through_the_trainer(tmp_path: Path) -> None:
    setups = ["fp32, channels-last, batch 256", "fp32, NCHW, batch 512"]
    report = train_speed.run("elubench_small", setups, rounds=1, steps=1, images=512)
    assert [row["setup"] for row in report["rows"]] == setups
    assert all(row["images_per_s"] > 0 and len(row["samples"]) == 1 for row in report["rows"])
    train_speed.write_report(report, tmp_path / "speed")
    table = (tmp_path / "speed.md").read_text()
    assert "| fp32, channels-last, batch 256 |" in table and "| 1.0 |" in table  # the first row: "before"
