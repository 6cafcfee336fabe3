"""What a user meets on the way through the CLI: every key setting has a flag (and the flag reaches the
config), an input error is one `error:` line and exit 2 naming the known values, item-kNN pruning and
repeated splits are options, and a dataset without categories is announced when it is prepared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mirec.cli import run
from mirec.config import DataConfig, SynthConfig
from mirec.data import prepare
from mirec.models import BASELINES, ModelConfig, available_models
from mirec.train import TrainConfig

MIREC = Path(sys.executable).with_name("mirec")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    cfg = DataConfig(out_dir=str(out), synth=SynthConfig(n_users=120, n_items=150, n_categories=5, seq_len=(10, 20)))
    prepare(cfg, progress=False)
    return out


def mirec(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`mirec ARGS` in this process, through the real entry point (mirec.cli.run): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["mirec", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        run()
    cap = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else code), cap.out, cap.err


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---- mirec train: flags -> configs --------------------------------------------------------------------
def test_train_flags_reach_the_written_configs(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"
    code, stdout, err = mirec(monkeypatch, capsys, "train", "--data", tiny, "--out", out, "--model", "comirec_sa",
                              "--k", 2, "--dim", 8, "--max-len", 20, "--temperature", 0.2, "--learn-temperature",
                              "--samples-per-epoch", 320, "--patience", 2, "--max-time", 300, "--sampling", "users",
                              "--negatives", "uniform", "--num-negatives", 16, "--selection", "sampled",
                              "--weight-decay", 0.01, "--optimizer", "adamw", "--schedule", "cosine",
                              "--warmup-steps", 1, "--logq", "--attn-temperature", 2.0, "--dropout", 0.1,
                              "--threads", 1, "--device", "cpu", "--batch-size", 32, "--max-steps", 2, "--no-progress")
    assert code == 0, err
    tc = json.loads((out / "train_config.json").read_text())
    mc = json.loads((out / "model_config.json").read_text())
    assert {k: mc[k] for k in ("name", "K", "dim", "max_len", "selection", "attn_temperature", "dropout")} == dict(
        name="comirec_sa", K=2, dim=8, max_len=20, selection="sampled", attn_temperature=2.0, dropout=0.1)
    assert {k: tc[k] for k in ("temperature", "learn_temperature", "samples_per_epoch", "patience", "max_time_s",
                               "sampling", "negatives", "num_negatives", "weight_decay", "optimizer", "schedule",
                               "warmup_steps", "logq", "num_threads", "device", "batch_size", "max_steps")} == dict(
        temperature=0.2, learn_temperature=True, samples_per_epoch=320, patience=2, max_time_s=300.0,
        sampling="users", negatives="uniform", num_negatives=16, weight_decay=0.01, optimizer="adamw",
        schedule="cosine", warmup_steps=1, logq=True, num_threads=1, device="cpu", batch_size=32, max_steps=2)
    assert json.loads(stdout)["checkpoint"] == str(out)


class _Captured(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """Replace mirec.train.train: the configs `mirec train` would train with, without training."""
    seen: dict = {}

    def fake_train(dataset, mcfg, tcfg, out, **kw):
        seen.update(dataset=dataset, model=mcfg, train=tcfg)
        raise _Captured

    monkeypatch.setattr("mirec.train.train", fake_train)
    return seen


def test_train_overrides_apply_on_top_of_the_yaml_and_tri_states_keep_it(tiny, tmp_path, monkeypatch, captured):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "mind", "K": 3, "similarity": "dot"},
                                   "train": {"logq": True, "learn_temperature": True, "lr": 0.01, "epochs": 7}}))
    monkeypatch.setattr(sys, "argv", ["mirec", "train", "--data", str(tiny), "--out", str(tmp_path / "o"),
                                      "--config", str(cfg), "--model", "single", "--lr", "0.5", "--split-seed", "3"])
    with pytest.raises(_Captured):
        run()
    m, t = captured["model"], captured["train"]
    assert (m.name, m.K, m.similarity) == ("single", 3, "dot")  # --model overrides the YAML's name
    assert (t.lr, t.epochs, t.logq, t.learn_temperature) == (0.5, 7, True, True)  # tri-states not given: YAML kept
    assert captured["dataset"].meta["split_seed"] == 3
    monkeypatch.setattr(sys, "argv", sys.argv + ["--no-logq", "--fixed-temperature", "--similarity", "cos"])
    with pytest.raises(_Captured):
        run()
    assert (captured["train"].logq, captured["train"].learn_temperature, captured["model"].similarity) == (
        False, False, "cos")


def test_train_help_defaults_are_the_config_defaults():
    import typer.main

    from mirec.cli import app

    cmd = typer.main.get_command(app).commands["train"]
    fields = {"--k": (ModelConfig, "K"), "--dim": (ModelConfig, "dim"), "--max-len": (ModelConfig, "max_len"),
              "--similarity": (ModelConfig, "similarity"), "--attn-temperature": (ModelConfig, "attn_temperature"),
              "--dropout": (ModelConfig, "dropout"), "--epochs": (TrainConfig, "epochs"),
              "--patience": (TrainConfig, "patience"), "--sampling": (TrainConfig, "sampling"),
              "--batch-size": (TrainConfig, "batch_size"), "--lr": (TrainConfig, "lr"),
              "--optimizer": (TrainConfig, "optimizer"), "--weight-decay": (TrainConfig, "weight_decay"),
              "--schedule": (TrainConfig, "schedule"), "--warmup-steps": (TrainConfig, "warmup_steps"),
              "--negatives": (TrainConfig, "negatives"), "--num-negatives": (TrainConfig, "num_negatives"),
              "--temperature": (TrainConfig, "temperature"), "--remi-rr": (TrainConfig, "remi_rr_weight"),
              "--remi-beta": (TrainConfig, "remi_hard_neg_beta"), "--seed": (TrainConfig, "seed"),
              "--device": (TrainConfig, "device"), "--amp": (TrainConfig, "amp")}
    shown = {o: p.show_default for p in cmd.params for o in p.opts}
    for flag, (cls, name) in fields.items():
        assert shown[flag] == str(cls.model_fields[name].default), flag
    assert ("off", "fixed") == (shown["--logq"], shown["--learn-temperature"])
    assert not TrainConfig.model_fields["logq"].default and not TrainConfig.model_fields["learn_temperature"].default


# ---- input errors: one line, exit 2, the known names ------------------------------------------------
def test_unknown_model_is_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    code, _, err = mirec(monkeypatch, capsys, "train", "--data", tmp_path / "no-such-data", "--out", tmp_path / "o",
                         "--model", "itemknn")
    line = assert_one_error_line(code, err, "unknown model 'itemknn'", ", ".join(available_models()),
                                 "mirec evaluate --baseline")
    assert "no-such-data" not in line


def test_unknown_model_from_the_installed_command(tmp_path):
    res = subprocess.run([str(MIREC), "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "x"],
                         capture_output=True, text=True, timeout=120)
    assert_one_error_line(res.returncode, res.stderr, "unknown model 'x'", "comirec_sa", "sasrec")
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, needles", [
    (["--baseline", "knn"], ["unknown baseline 'knn'", ", ".join(BASELINES)]),
    (["--baseline", "popularity", "--split", "train"], ["--split", "valid, test", "'train'"]),
    (["--baseline", "popularity", "--aggregator", "nope"], ["unknown aggregator 'nope'", "merge"]),
    (["--baseline", "popularity", "--neighbors", "5"], ["--baseline itemknn only"]),
    (["--baseline", "itemknn", "--history-len", "0"], ["--history-len must be at least 1"]),
])
def test_evaluate_input_errors_are_one_line(tiny, monkeypatch, capsys, args, needles):
    code, _, err = mirec(monkeypatch, capsys, "evaluate", "--data", tiny, *args)
    assert_one_error_line(code, err, *needles)


def test_bad_choice_and_missing_yaml_are_one_line(tiny, tmp_path, monkeypatch, capsys):
    code, _, err = mirec(monkeypatch, capsys, "train", "--data", tiny, "--out", tmp_path, "--negatives", "hard")
    assert_one_error_line(code, err, "negatives")
    code, _, err = mirec(monkeypatch, capsys, "train", "--data", tiny, "--out", tmp_path, "--config", tmp_path / "x.yaml")
    assert_one_error_line(code, err, "config file not found")


def test_unknown_name_error_is_both_kinds():
    from mirec.errors import ConfigError, UnknownNameError
    from mirec.models import build, fit_baseline

    for fn in (lambda: build(ModelConfig(name="nope", n_items=3)), lambda: fit_baseline("nope", {}, 3)):
        with pytest.raises(KeyError) as exc:
            fn()
        assert isinstance(exc.value, (ConfigError, UnknownNameError))
        assert str(exc.value).startswith("unknown ") and not str(exc.value).startswith('"')


# ---- mirec evaluate: item-kNN options, repeated splits -------------------------------------------------
def test_itemknn_options_reach_the_baseline(tiny, monkeypatch, capsys):
    from mirec.models.baselines import ItemKNN

    seen = {}
    orig = ItemKNN.fit.__func__

    def spy(cls, sequences, n_items, **kw):
        seen.update(kw)
        return orig(cls, sequences, n_items, **kw)

    monkeypatch.setattr(ItemKNN, "fit", classmethod(spy))
    code, out, err = mirec(monkeypatch, capsys, "evaluate", "--data", tiny, "--baseline", "itemknn",
                           "--neighbors", 5, "--history-len", 3)
    assert code == 0, err
    assert seen == {"neighbors": 5, "history_len": 3} and "recall@50" in out
    seen.clear()
    assert mirec(monkeypatch, capsys, "evaluate", "--data", tiny, "--baseline", "itemknn")[0] == 0
    assert seen == {}  # defaults: unpruned, whole input


def test_split_seed_changes_the_evaluated_users(tiny, tmp_path, monkeypatch, capsys):
    def users(*extra) -> set[int]:
        out = tmp_path / "-".join(map(str, extra or ["base"]))
        code, _, err = mirec(monkeypatch, capsys, "evaluate", "--data", tiny, "--baseline", "popularity",
                             "--out", out, *extra)
        assert code == 0, err
        return {json.loads(x)["user_idx"] for x in (out / "served.jsonl").read_text().splitlines() if x.strip()}

    base, s7, s7_again = users(), users("--split-seed", 7), users("--split-seed", 7)
    assert base and s7 and base != s7 and s7 == s7_again


# ---- mirec data prepare: the single-category warning --------------------------------------------------
@pytest.fixture(scope="module")
def raw_table(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    n_users, n_items, per_user = 60, 40, 15
    rows = [(f"u{u}", f"i{i}", 1_600_000_000 + u * 1000 + t) for u in range(n_users)
            for t, i in enumerate(rng.choice(n_items, per_user, replace=False))]
    pd.DataFrame(rows, columns=["uid", "item_id", "ts"]).to_csv(d / "events.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                  "genre": [f"g{i % 4}" for i in range(n_items)]}).to_csv(d / "items.csv", index=False)
    return d / "events.csv", d / "items.csv"


def _prepare(monkeypatch, capsys, events, out, *extra):
    return mirec(monkeypatch, capsys, "data", "prepare", events, "--format", "table", "--map", "user_id=uid",
                 "--map", "timestamp=ts", "--out", out, "--no-progress", *extra)


def test_single_category_warning_without_items(raw_table, tmp_path, monkeypatch, capsys):
    events, _ = raw_table
    code, out, err = _prepare(monkeypatch, capsys, events, tmp_path / "a")
    assert code == 0, err
    warn = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warn) == 1 and "single item category" in warn[0] and "Div@50" in warn[0] and "--items" in warn[0]
    assert "dataset written to" in out  # a warning, not a failure


def test_no_warning_with_categories(raw_table, tmp_path, monkeypatch, capsys):
    events, items = raw_table
    code, out, err = _prepare(monkeypatch, capsys, events, tmp_path / "b", "--items", items, "--map", "category=genre")
    assert code == 0, err
    assert "warning:" not in err and "categories 4" in out


def test_warning_texts_name_the_fix():
    from mirec.cli.data import single_category_warning
    from mirec.config import SourceConfig

    def msg(fmt, items=None, from_config=False):
        return single_category_warning(1, DataConfig(source=SourceConfig(format=fmt, path="x", items_path=items)),
                                       from_config)

    assert single_category_warning(3, DataConfig()) is None
    assert "movies.csv" in msg("movielens-csv") and "movies.dat" in msg("movielens-dat")
    assert "whitespace reads no item metadata" in msg("whitespace")
    assert "source.items_path" in msg("table", from_config=True)
    assert "same category from it.csv" in msg("table", "it.csv")
