"""The command line explains itself: every flag's help has a meaning and a default, config fields
get theirs from the sections' docstrings, ``--config`` reruns a saved run, ``presets`` lists them."""

import argparse
import json

import pytest

from ep_jax.app import cli
from ep_jax.app.config import DEFAULT_PRESET, FIELD_SECTION, PRESETS, choices, get_preset


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="ep-jax")
    sub = parser.add_subparsers(dest="command")
    for add in (cli._add_gradcheck, cli._add_train, cli._add_eval, cli._add_credit, cli._add_presets):
        add(sub)
    return dict(sub.choices)


def options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", ["gradcheck", "train", "eval", "credit", "presets"])
def test_every_flag_states_meaning_and_default(command):
    bad = []
    for action in options(subparsers()[command]):
        text = (action.help or "").lower()
        # A meaning: words before the default; a default (or "required").
        meaning = text.split("default")[0].strip(" ([;")
        if len(meaning) < 8 or not ("default" in text or action.required):
            bad.append(f"{'/'.join(action.option_strings)}: {action.help!r}")
    assert not bad, f"ep-jax {command}: flags whose help lacks a meaning or a default:\n" + "\n".join(bad)


def test_field_flags_state_section_default_and_allowed_values():
    train = subparsers()["train"]
    by_dest = {a.dest: a for a in options(train)}
    default_cfg = get_preset(DEFAULT_PRESET).flat()
    for name, section in FIELD_SECTION.items():
        text = by_dest[name].help % {}  # argparse's own formatting must accept it
        assert text.split(". [")[0].strip(), name  # the docstring's meaning comes first
        assert f"[{section}.{name}; default: {cli._shown(default_cfg[name])}" in text, text
        allowed = choices(name, "layered") if "layered" in text or "read by" not in text else None
        if allowed:
            assert all(str(v) in text for v in allowed), (name, text)


def test_attributes_parser_reads_combined_entries_and_continuations():
    doc = """Title.

    Attributes:
      alpha: first line
        continued here.
      beta, gamma: shared text with a colon: inside.
      delta: last one.

    Returns:
      nothing: not an attribute.
    """
    import inspect

    entries = cli._attributes(inspect.cleandoc(doc))
    assert entries == {"alpha": "first line continued here.",
                       "beta": "shared text with a colon: inside.",
                       "gamma": "shared text with a colon: inside.", "delta": "last one."}


def test_a_field_without_a_docstring_entry_is_an_error(monkeypatch):
    from ep_jax.app import config

    monkeypatch.setattr(config.LoopConfig, "__doc__", "No attributes here.")
    with pytest.raises(ValueError, match=r"loop\.epochs: no entry in LoopConfig's Attributes"):
        cli.field_help("epochs")


def test_presets_lists_every_preset_with_its_description(capsys):
    assert cli.main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PRESETS)
    for name, cfg in PRESETS.items():
        assert any(l.split()[0] == name and cfg.description in l for l in lines), name
    assert cli.main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(PRESETS)
    assert data["xor"]["description"] == PRESETS["xor"].description


def test_config_rejects_files_that_are_not_configs(tmp_path, capsys):
    cases = {
        "not_json.json": ("epochs: 3", "not JSON"),
        "summary.json": (json.dumps({"test_error": 0.1, "epochs": 3}), "expected a config.json"),
        "list.json": ("[1, 2]", "expected a config.json"),
        "typo.json": (json.dumps({"rule": {"betta": 0.5}}), r"rule\.betta"),
        "bad_value.json": (json.dumps({"loop": {"epochs": 0}}), r"loop\.epochs"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and __import__("re").search(expected, err), (name, err)
    assert cli.main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    good = tmp_path / "config.json"
    good.write_text(get_preset("xor").to_json())
    assert cli.main(["train", "--config", str(good), "--preset", "xor"]) == 2
    assert "either --config or --preset" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_reruns_a_saved_run_in_a_new_directory_with_overrides(tmp_path, capsys, monkeypatch):
    from ep_jax.app import train as train_module

    ran = {}

    def fake_train(cfg, *, out_dir, data_dir, resume, quiet):
        # The loop itself is tested in test_train.py; here: what the CLI hands it.
        ran.update(cfg=cfg, out_dir=out_dir, resume=resume)
        return {"state": None, "preset": cfg.preset, "epochs": cfg.loop.epochs}

    monkeypatch.setattr(train_module, "train", fake_train)
    saved = tmp_path / "first"
    saved.mkdir()
    cfg = get_preset("xor").with_overrides(epochs=7, seed=3, beta=0.25)
    (saved / "config.json").write_text(cfg.to_json())
    out = tmp_path / "again"
    assert cli.main(["train", "--config", str(saved / "config.json"), "--out", str(out), "--quiet",
                     "--checkpoint-every", "0"]) == 0
    assert ran["cfg"] == cfg.with_overrides(checkpoint_every=0)  # every saved field, one override
    assert ran["out_dir"] == str(out) and ran["resume"] is False
    assert json.loads(capsys.readouterr().out) == {"preset": "xor", "epochs": 7}
    # A run directory is accepted too (its config.json is read); without --out a new default
    # directory named after the saved preset is made, never the saved run's.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", str(saved), "--quiet"]) == 0
    assert ran["cfg"] == cfg and "xor" in ran["out_dir"] and str(saved) not in ran["out_dir"]
