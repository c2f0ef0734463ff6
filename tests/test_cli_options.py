"""Every config field has its flag on every command that takes it, generated from the dataclasses; flag values
are parsed to the field's type or refused in one line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
import pytest
import typer

from covidxr.cli import app
from covidxr.cli.options import flag_of, load_config
from covidxr.config import DataConfig, TrainConfig
from covidxr.errors import CovidxrError


def _command(*path: str) -> click.Command:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def _flags(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in p.opts + p.secondary_opts}


@pytest.mark.parametrize("path", [("run",), ("train",), ("search",)])
def test_training_commands_have_a_flag_for_every_data_and_train_field(path: tuple[str, ...]) -> None:
    flags = _flags(_command(*path))
    missing = [f.name for kind in (DataConfig, TrainConfig) for f in fields(kind) if flag_of(f) not in flags]
    assert missing == []


@pytest.mark.parametrize("path", [("data", "inspect"), ("data", "split")])
def test_data_commands_have_a_flag_for_every_data_field(path: tuple[str, ...]) -> None:
    command = _command(*path)
    flags = _flags(command)
    missing = [f.name for f in fields(DataConfig) if f.name != "paths" and flag_of(f) not in flags]
    assert missing == []
    assert [p.name for p in command.params if p.param_type_name == "argument"] == ["paths"]  # the data sets


def test_evaluate_takes_out_and_a_label_map() -> None:
    assert {"--out", "--label-map", "--data", "--threshold"} <= _flags(_command("evaluate"))


def test_flag_values_become_typed_config_fields(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "paths": [tmp_path / "a", tmp_path / "b"],
            "task": "multiclass",
            "label_map": "Viral Pneumonia=pneumonia,Lung_Opacity=other",
            "drop_labels": "other, lung opacity",
            "split_fractions": "0.6,0.2,0.2",
            "views": "PA,AP",
            "cnn_widths": "8,16",
            "augment_ops": "{rotate: {p: 0.2}}",
            "feature_cache": False,
            "lr": 0.01,
        },
    )
    assert cfg.data.paths == (str(tmp_path / "a"), str(tmp_path / "b"))
    assert cfg.data.label_map == {"Viral Pneumonia": "pneumonia", "Lung_Opacity": "other"}
    assert cfg.data.drop_labels == ("other", "lung opacity") and cfg.data.views == ("PA", "AP")
    assert cfg.data.split_fractions == (0.6, 0.2, 0.2) and cfg.train.cnn_widths == (8, 16)
    assert cfg.train.augment_ops == {"rotate": {"p": 0.2}} and cfg.train.feature_cache is False
    assert cfg.train.lr == 0.01 and cfg.train.backbone == TrainConfig().backbone  # flags not given keep defaults


def test_bad_flag_values_name_the_flag() -> None:
    with pytest.raises(CovidxrError, match=r"--fractions '0\.7,0\.3': expected 3 comma-separated values"):
        load_config(None, {"split_fractions": "0.7,0.3"})
    with pytest.raises(CovidxrError, match="--cnn-widths 'wide'"):
        load_config(None, {"cnn_widths": "wide"})
