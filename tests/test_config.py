"""Configs as data: nested sections, flat overrides and flags, JSON, and the resume fingerprint."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Optional

import jax
import numpy as np
import pytest

from ep_jax.app import checkpoint
from ep_jax.app.cli import main
from ep_jax.app.config import (
    FIELD_SECTION,
    FINGERPRINT,
    PRESETS,
    RESUME_SAFE,
    SECTIONS,
    TrainConfig,
    choices,
    field_type,
    get_preset,
)
from ep_jax.app.data import DATASETS
from ep_jax.app.train import train
from tests.test_train import tiny_cfg, tiny_data

# One config of each model kind; every field is used by at least one of them.
BASES = {"layered": tiny_cfg(), "mlp": get_preset("bp-digits"),
         "residual": get_preset("residual-mnist10k"), "conv": get_preset("conv-mnist10k")}


def all_paths() -> list[str]:
    return ["preset", "description"] + [
        f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def test_every_field_is_fingerprinted_or_declared_resume_safe_never_both():
    fingerprint, safe = set(FINGERPRINT), set(RESUME_SAFE)
    assert not fingerprint & safe
    assert fingerprint | safe == set(all_paths())
    for section in ("model", "rule", "optimizer", "data"):  # they change what the state means
        assert {f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section])} <= fingerprint
    assert "loop.seed" in fingerprint
    assert {"loop.epochs", "loop.eval_every", "loop.checkpoint_every", "loop.log_every",
            "loop.credit_batch"} <= safe
    # Flat names (flags, with_overrides) are unique across sections.
    assert len(FIELD_SECTION) == len(all_paths()) - 2


def alternatives(cfg: TrainConfig, name: str) -> list:
    """Values of field ``name`` other than ``cfg``'s, derived from the field's type or choices."""
    value = cfg.flat()[name]
    allowed = DATASETS if name == "dataset" else choices(name, cfg.model.kind)
    kind = field_type(name)
    if allowed is not None:
        out = list(allowed)
    elif kind is bool:
        out = [not value]
    elif kind is int:
        out = [value + 1]
    elif kind in (float, Optional[float]):
        out = [0.5] if value is None else [2 * value, value / 2, 0.1]
    elif kind == tuple[int, ...]:
        out = [tuple(n + 1 for n in value)]
    else:
        assert kind == tuple[float, ...], (name, kind)
        out = [tuple(2 * a for a in value)]
    return [v for v in out if v != value]


def altered(name: str) -> Optional[tuple[TrainConfig, TrainConfig]]:
    """(saved, resumed) configs, both valid, that differ in field ``name`` only, or ``None``."""
    for base in BASES.values():
        for value in alternatives(base, name):
            try:
                return base, base.with_overrides(**{name: value})
            except ValueError:  # e.g. a rule that this model kind does not train
                continue
    return None


def test_resume_refuses_a_change_of_any_fingerprinted_field(tmp_path):
    """For every fingerprinted field, a resume with only that field changed names the field."""
    checked = set()
    for path in FINGERPRINT:
        name = path.split(".")[1]
        pair = altered(name)
        if pair is None:
            # model.kind: no other kind accepts a layered net's fields; a twin differs in it first.
            assert path == "model.kind", path
            pair = (get_preset("digits"), get_preset("bp-digits"))
        saved, resumed = pair
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.json").write_text(saved.to_json())
        theirs, ours = (getattr(getattr(c, FIELD_SECTION[name]), name) for c in pair)
        with pytest.raises(checkpoint.CheckpointError,
                           match=re.escape(f"{path} is {theirs!r} there, {ours!r} in this run")):
            checkpoint.check_config(run_dir, resumed)
        checkpoint.check_config(run_dir, saved)  # the same config resumes
        checked.add(path)
    assert checked == set(FINGERPRINT)


def test_resume_with_another_embedding_gradient_refuses_end_to_end(tmp_path):
    cfg = get_preset("residual-mnist10k").with_overrides(
        dataset="blobs", hidden=(8,), n_blocks=1, batch_size=10, epochs=1, credit_batch=0,
        log_every=1)
    data = tiny_data()
    train(cfg, data=data, out_dir=tmp_path, quiet=True, plots=False)
    other = next(v for v in choices("embedding_gradient", "residual") if v != "exact")
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(
            f"rule.embedding_gradient is 'exact' there, {other!r} in this run")):
        train(cfg.with_overrides(embedding_gradient=other, epochs=2), data=data, out_dir=tmp_path,
              resume=True, quiet=True)


def test_more_epochs_on_resume_continue_the_same_run(tmp_path):
    data = tiny_data()
    straight = train(tiny_cfg(epochs=4), data=data, quiet=True)
    train(tiny_cfg(epochs=2), data=data, out_dir=tmp_path, quiet=True, plots=False)
    resumed = train(tiny_cfg(epochs=4, eval_every=2, log_every=3), data=data, out_dir=tmp_path,
                    resume=True, quiet=True, plots=False)
    assert resumed["resumed_from_epoch"] == 2 and resumed["steps"] == straight["steps"]
    jax.tree.map(np.testing.assert_array_equal, straight["state"], resumed["state"])


def test_a_cosine_schedule_makes_the_run_length_part_of_the_fingerprint(tmp_path):
    for schedule, refused in (("constant", False), ("cosine", True)):
        cfg = tiny_cfg(schedule=schedule)
        run_dir = tmp_path / schedule
        run_dir.mkdir()
        (run_dir / "config.json").write_text(cfg.to_json())
        checkpoint.check_config(run_dir, cfg.with_overrides(
            preset="renamed", eval_every=2, checkpoint_every=0, log_every=1))
        longer = cfg.with_overrides(epochs=6)
        if refused:
            with pytest.raises(checkpoint.CheckpointError,
                               match=r"loop.epochs is 3 there, 6 in this run \(optimizer.schedule"):
                checkpoint.check_config(run_dir, longer)
        else:
            checkpoint.check_config(run_dir, longer)


def test_a_saved_config_that_is_not_a_run_config_is_reported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": [8]}))  # an old flat config
    with pytest.raises(checkpoint.CheckpointError, match=r"not a valid run config .*'hidden'"):
        checkpoint.check_config(tmp_path, tiny_cfg())


def test_json_round_trip_and_unknown_fields_named_by_section():
    for cfg in PRESETS.values():
        assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    d = json.loads(get_preset("digits").to_json())
    assert set(d) == {"preset", "description", *SECTIONS} and d["rule"]["beta"] == 0.5
    d["rule"]["betta"] = 0.3
    d["model"]["width"] = 3
    with pytest.raises(ValueError, match=re.escape("unknown fields ['model.width', 'rule.betta']")):
        TrainConfig.from_dict(d)
    with pytest.raises(ValueError, match=re.escape("config: unknown fields ['hidden']")):
        TrainConfig.from_dict({"hidden": [5]})


@pytest.mark.parametrize("overrides, message", [
    (dict(epochs=0), "loop.epochs: expected an int >= 1, received 0"),
    (dict(step_size=-1.0), "rule.step_size: expected a number > 0, received -1.0"),
    (dict(persistent="yes"), "rule.persistent: expected true or false, received 'yes'"),
    (dict(hidden=()), "model.hidden: expected a non-empty sequence of sizes >= 1, received ()"),
    (dict(state_init="ones"), "rule.state_init: expected one of ('zeros', 'feedforward') for "
                              "model.kind='layered', received 'ones'"),
    (dict(dropout=0.5), "model.dropout: not used by model.kind='layered'; expected its default "
                        "0.0, received 0.5"),
    (dict(widht=3), "config: unknown fields ['widht']"),
])
def test_errors_name_the_field_the_expected_and_the_received_value(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig().with_overrides(**overrides)


def test_presets_use_every_field_they_set():
    """A preset never carries a value its model kind ignores (no silently ignored settings)."""
    for cfg in PRESETS.values():
        kind = cfg.model.kind
        for s in SECTIONS:
            section = getattr(cfg, s)
            for f in dataclasses.fields(section):
                if kind not in f.metadata["used_by"]:
                    assert getattr(section, f.name) == f.default, (cfg.preset, s, f.name)


def test_cli_has_one_flag_per_field_and_refuses_unused_ones(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    # One help entry per flag: "--name METAVAR  meaning [section.name; default: ...; allowed: ...]".
    entries = {e.split()[0]: " ".join(e.split()) for e in re.split(r"\n  (?=--)", text)}
    for name, section in FIELD_SECTION.items():
        entry = entries.get("--" + name.replace("_", "-"), "")
        assert f"[{section}.{name}; default:" in entry, (name, entry)
    assert main(["train", "--preset", "bp-xor", "--beta", "0.3", "--out", str(tmp_path / "a")]) == 2
    assert "ep-jax train: error: rule.beta: not used by model.kind='mlp'" in capsys.readouterr().err
    # "none" is a value (no clipping, no tolerance), not "flag not given".
    out = tmp_path / "b"
    assert main(["train", "--preset", "xor", "--epochs", "2", "--eval-every", "1",
                 "--eval-tol", "none", "--grad-clip", "none", "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["rule"]["eval_tol"] is None and saved["loop"]["epochs"] == 2
    assert saved["rule"]["free_steps"] == get_preset("xor").rule.free_steps
