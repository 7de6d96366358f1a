"""`list`: a short overview by default; every env id on request, narrowed by text and family; pretrained
models with their suite and card, read from cards that may be a user's (untrusted) files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rims_rl import cli
from rims_rl.app import checkpoint


def _out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_the_overview_is_short_and_says_how_to_see_every_id(capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(["list"], capsys)
    assert len(out.splitlines()) < 60
    assert "MiniGrid-DoorKey-16x16-v0" not in out  # 182 MiniGrid ids stay out of the overview
    assert "list envs" in out


def test_list_envs_narrows_by_text_and_family(capsys: pytest.CaptureFixture[str]) -> None:
    ids = [
        line.strip() for line in _out(["list", "envs", "doorkey"], capsys).splitlines() if line[:2] == "  "
    ]
    assert "MiniGrid-DoorKey-16x16-v0" in ids and all("doorkey" in i.lower() for i in ids)
    out = _out(["list", "envs", "--family", "popgym"], capsys)
    assert "popgym-RepeatPreviousEasy-v0" in out and "MiniGrid" not in out and "ALE/" not in out
    out = _out(["list", "envs", "cartpole", "--family", "classic"], capsys)
    assert "CartPole-v1" in out and "popgym" not in out
    assert "no env id contains" in _out(["list", "envs", "nosuchgame"], capsys)
    # the text may come after the option too
    assert _out(["list", "envs", "--family", "classic", "cartpole"], capsys) == out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["list", "envs", "--family", "minigird"], "minigrid"),
        (["list", "agents", "door"], "list envs"),
        (["list", "envs", "a", "b"], "unrecognized arguments: b"),
        (["list", "agents", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_list_arguments_fail_in_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().splitlines()[-1].count("error: ") == 1


def test_list_pretrained_shows_suite_and_card(capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(["list", "pretrained"], capsys)
    line = next(x for x in out.splitlines() if "doorkey-5x5-rims_ppo " in x)
    assert "MiniGrid-DoorKey-5x5-v0" in line and "suite minigrid-doorkey" in line
    card = Path(line.split("card ")[-1])
    assert card.is_file() and card.name == "MODEL_CARD.md"


def test_a_hostile_card_cannot_write_to_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = checkpoint.PRETRAINED_DIR / "doorkey-5x5-rims_ppo" / "model.zip"
    for name, card in (
        ("evil\x1b[2J", {"agent": "\x1b[2J", "train_env": ["x"], "suite": "s" * 500}),
        ("bad", None),
    ):
        (tmp_path / name).mkdir()
        shutil.copyfile(shipped, tmp_path / name / "model.zip")
        (tmp_path / name / "card.json").write_text("{not json" if card is None else json.dumps(card))
    monkeypatch.setattr(checkpoint, "PRETRAINED_DIR", tmp_path)
    out = _out(["list", "pretrained"], capsys)
    assert "\x1b" not in out and "s" * 201 not in out
    assert out.count("? on ?") == 2  # both still listed, with unknown fields as '?'
