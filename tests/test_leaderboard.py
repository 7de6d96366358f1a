"""The leaderboard: cells are the IQMs of the runs' scores, empty cells name the command that fills them,
the committed page is what the committed records give, and the spec is treated as untrusted."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rims_rl.app.errors import UserError
from rims_rl.app.leaderboard import (
    build_cells,
    cell_sizes,
    control_rows,
    equal_return_rows,
    improvement_matrix,
    load_spec,
    markdown,
    write_leaderboard,
)
from rims_rl.app.stats import iqm
from rims_rl.app.summary import OOD_LABEL, improvement_rows, summary_rows
from rims_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _record(
    folder: Path,
    agent: str,
    seed: int,
    train: float,
    ood: list[float],
    seconds: float | None = None,
    job: dict | None = None,
) -> None:
    envs = [("train", True, train), *((f"v{i}", False, r) for i, r in enumerate(ood))]
    records = [
        {
            "agent": agent, "seed": seed, "env": name, "env_id": f"E-{name}", "is_train": is_train,
            "mean_return": ret, "std_return": 0.0, "success_rate": None, "n_episodes": 2,
            "returns": [ret, ret], "mean_length": 5.0, "timesteps": 1000, "run_dir": f"r/{agent}{seed}",
        }
        for name, is_train, ret in envs
    ]  # fmt: skip
    payload: dict = {"settings": {}, "job": job or {}, "records": records, "curve": None}
    if seconds is not None:
        payload["train_seconds"] = seconds
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{agent}-seed{seed}.json").write_text(json.dumps(payload))


SPEC = """\
agents: [a, b, c]
suites:
  s1:
    records: [s1/records]
    not_applicable: [c]
    equal_return_at: 0.85
  s2:
    records: [s2/records]
    pending:
      - agents: [b, c]
        command: python train.py compare --suite s2 --agents b c
"""


def _tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for seed in range(5):
        _record(tmp_path / "s1/records", "a", seed, 0.9, list(0.5 + 0.1 * rng.random(3)), seconds=10.0)
        _record(tmp_path / "s1/records", "b", seed, 0.8, list(0.2 + 0.1 * rng.random(3)))
        _record(tmp_path / "s2/records", "a", seed, 0.7, list(0.1 * rng.random(2)))
    spec = tmp_path / "leaderboard.yml"
    spec.write_text(SPEC)
    return spec


def test_report_ood_figures_equal_the_leaderboards(tmp_path: Path) -> None:
    """A suite's report and the leaderboard say the same OOD IQM and P for the same records."""
    spec = load_spec(_tree(tmp_path))
    cells = build_cells(spec, reps=300)
    records = [
        rec
        for file in sorted((tmp_path / "s1/records").glob("*.json"))
        for rec in json.loads(file.read_text())["records"]
    ]
    rows = {r["agent"]: r for r in summary_rows(records, reps=300) if r["env"] == OOD_LABEL}
    for agent in ("a", "b"):
        ood = cells[(agent, "s1")].ood
        assert (rows[agent]["iqm"], rows[agent]["iqm_lo"], rows[agent]["iqm_hi"]) == pytest.approx(
            (ood.point, ood.low, ood.high)
        )
    (p,) = [r for r in improvement_rows(records, "a", "b", reps=300) if r["env"] == OOD_LABEL]
    one_suite = replace(spec, suites=tuple(e for e in spec.suites if e.suite == "s1"))
    matrix = improvement_matrix(one_suite, cells, reps=300)[("a", "b")]
    assert (p["p"], p["p_lo"], p["p_hi"]) == pytest.approx((matrix.point, matrix.low, matrix.high))


def test_model_sizes_are_measured_from_each_cells_recorded_job(tmp_path: Path) -> None:
    """The sizes table rebuilds each cell's model from its record's job; a job asking for a huge model
    (about 20G parameters) is measured on the meta device, never built."""
    huge = {
        f"policy_kwargs.core_kwargs.{k}": v
        for k, v in (("d_model", 4096), ("n_layers", 16), ("ffn_mult", 16))
    }
    for agent, overrides in (("lstm_ppo", {}), ("gru_ppo", {}), ("tlb_ppo", huge)):
        job = {"agent": agent, "seed": 0, "suite": "popgym-repeat-previous", "overrides": overrides}
        _record(tmp_path / "s/records", agent, 0, 0.5, [0.4, 0.3], job=job)
    (tmp_path / "spec.yml").write_text(
        "agents: [lstm_ppo, gru_ppo, tlb_ppo]\nsuites:\n  s:\n    records: [s/records]\n"
    )
    spec = load_spec(tmp_path / "spec.yml")
    cells = build_cells(spec, reps=50)
    sizes = cell_sizes(spec, cells)
    assert sizes[("tlb_ppo", "s")].total > 10**10
    assert sizes[("gru_ppo", "s")].core / sizes[("lstm_ppo", "s")].core == pytest.approx(0.75, abs=0.01)
    text = markdown(spec, cells, {}, None, "cmd", sizes=sizes)
    assert "## Model sizes" in text and "(0.75x)" in text


def test_cells_are_iqms_of_each_runs_mean_ood_return(tmp_path: Path) -> None:
    spec = load_spec(_tree(tmp_path))
    cells = build_cells(spec, reps=200)
    assert set(cells) == {("a", "s1"), ("b", "s1"), ("a", "s2")}
    cell = cells[("a", "s1")]
    per_run = []
    for seed in range(5):
        stored = json.loads((tmp_path / f"s1/records/a-seed{seed}.json").read_text())["records"]
        per_run.append(np.mean([r["mean_return"] for r in stored if not r["is_train"]]))
    assert cell.ood.point == pytest.approx(iqm(per_run))
    assert cell.train.point == pytest.approx(0.9) and cell.seeds == 5
    assert cell.steps_per_s == pytest.approx(100.0)  # 1000 steps in 10 s
    matrix = improvement_matrix(spec, cells, reps=200)
    assert matrix[("a", "b")].point == 1.0 and matrix[("b", "a")].point == 0.0  # a's OOD is above b's on s1
    page = markdown(spec, cells, matrix, None, "python train.py leaderboard")
    table = page.split("## P(row > column)")[0]
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "pending (P1)" in rows["| b"] and "n/a" in rows["| c"] and "(5 seeds, not yet 10)" in rows["| a"]
    assert "100 steps/s" in rows["| a"] and "steps/s not recorded" in rows["| b"]  # b's records carry no time
    assert "- P1: `python train.py compare --suite s2 --agents b c`" in page


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("[s1/records]", "[../elsewhere]"), "lies outside"),
        (lambda s: s.replace("agents: [a, b, c]", "agents: &x [a, b, c]\nother: *x"), "aliases"),
        (lambda s: s.replace("agents: [b, c]", "agents: [b, z]"), "not in 'agents'"),
        (lambda s: s.replace("not_applicable: [c]", "not_applicable: c"), "not_applicable"),
        (lambda s: s.replace("agents: [a, b, c]", "agents: [a, b, c]\ncontrol: ff"), "'control' must be one"),
    ],
)
def test_a_bad_spec_is_one_clear_error(tmp_path: Path, edit, message: str) -> None:
    spec = _tree(tmp_path)
    spec.write_text(edit(SPEC))
    with pytest.raises(UserError, match=message):
        build_cells(load_spec(spec), reps=100)


def test_a_seed_recorded_twice_is_refused(tmp_path: Path) -> None:
    spec = _tree(tmp_path)
    text = spec.read_text().replace("[s1/records]", "[s1/records, s1/copy]")
    spec.write_text(text)
    _record(tmp_path / "s1/copy", "a", 0, 0.9, [0.5, 0.5, 0.5])
    with pytest.raises(UserError, match="a seed 0 is recorded twice"):
        build_cells(load_spec(spec), reps=100)


def test_runs_scored_on_other_variants_are_not_pooled(tmp_path: Path) -> None:
    """A run evaluated on a suite with one more variant has a different OOD mean: one suite's runs must
    share their envs, or the cell mixes two measures."""
    spec = _tree(tmp_path)
    text = spec.read_text().replace("[s1/records]", "[s1/records, s1/newer]")
    spec.write_text(text)
    _record(tmp_path / "s1/newer", "a", 7, 0.9, [0.5, 0.5, 0.5, 0.1])  # a fourth variant
    with pytest.raises(UserError, match=r"suite s1: .*a-seed7\.json is scored on .*v3 \(E-v3\).*re-run"):
        build_cells(load_spec(spec), reps=100)


def test_the_committed_leaderboard_is_what_the_committed_records_give(tmp_path: Path) -> None:
    """Records added without regenerating the page (or a page edited by hand) fail here."""
    out = tmp_path / "leaderboard.md"
    assert main(["leaderboard", "--out", str(out)]) == 0
    assert out.read_text() == (ROOT / "docs/results/leaderboard.md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_write_leaderboard_writes_page_and_figures(tmp_path: Path) -> None:
    path = write_leaderboard(_tree(tmp_path), tmp_path / "board.md", "cmd", reps=100)
    assert "![OOD IQM per suite](board.png)" in path.read_text() and (tmp_path / "board.png").exists()
    assert "(board-equal-return.png)" in path.read_text() and (tmp_path / "board-equal-return.png").exists()


def test_equal_return_keeps_only_the_runs_that_reached_the_threshold(tmp_path: Path) -> None:
    """Runs of b below 0.85 on the training env are left out; a's all count (s1's threshold is 0.85)."""
    spec_path = _tree(tmp_path)
    _record(tmp_path / "s1/records", "b", 5, 0.95, [0.9, 0.9, 0.9])  # one well-trained b run, high OOD
    spec = load_spec(spec_path)
    rows = {(r.suite, r.agent): r for r in equal_return_rows(spec, build_cells(spec, reps=100), reps=100)}
    assert set(rows) == {("s1", "a"), ("s1", "b")}  # s2 has no threshold
    assert (rows[("s1", "a")].kept, rows[("s1", "a")].total) == (5, 5)
    assert (rows[("s1", "b")].kept, rows[("s1", "b")].total) == (1, 6)
    assert rows[("s1", "b")].ood.point == pytest.approx(0.9)


def test_the_control_rows_say_which_suites_need_memory(tmp_path: Path) -> None:
    """With b as the feed-forward control: a beats it on s1's training env in every pair of runs, ties it
    where their training scores are equal, and s2 (no control runs) gets no row."""
    spec_path = _tree(tmp_path)
    spec_path.write_text(SPEC.replace("agents: [a, b, c]", "agents: [a, b, c]\ncontrol: b"))
    spec = load_spec(spec_path)
    cells = build_cells(spec, reps=100)
    rows = {(r.suite, r.agent): r for r in control_rows(spec, cells, reps=100)}
    assert set(rows) == {("s1", "a")}
    assert rows[("s1", "a")].train.point == 1.0 and rows[("s1", "a")].ood.point == 1.0
    for seed in range(5):  # now a's training scores equal b's: no difference on the training env
        _record(tmp_path / "s1/records", "a", seed, 0.8, [0.5, 0.5, 0.5])
    cells = build_cells(spec, reps=100)
    (row,) = control_rows(spec, cells, reps=100)
    assert row.train.point == 0.5 and row.ood.point == 1.0
    page = markdown(spec, cells, {}, None, "cmd", control=[row])
    assert "## Against the feed-forward control: P(agent > b)" in page
    assert "| a | 0.50 [0.50, 0.50] / **1.00 [1.00, 1.00]** |" in page
    assert control_rows(load_spec(_tree(tmp_path)), cells, reps=100) == []  # no control named: no rows


def test_the_page_is_never_written_over_its_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spec named *.md gets its page beside it, and an --out naming the spec is refused in one line."""
    spec = _tree(tmp_path)
    as_md = spec.with_suffix(".md")
    as_md.write_text(spec.read_text())
    assert main(["leaderboard", "--spec", str(as_md), "--reps", "100"]) == 0
    assert as_md.read_text() == spec.read_text()
    assert (tmp_path / "leaderboard-leaderboard.md").read_text().startswith("# Leaderboard")
    capsys.readouterr()
    assert main(["leaderboard", "--spec", str(spec), "--out", str(spec), "--reps", "100"]) == 2
    assert spec.read_text() == as_md.read_text()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the spec" in err


def test_outside_a_checkout_the_default_spec_says_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 40.4: from an installed wheel the default spec is not there; one line says why and what to
    give."""
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --spec FILE" in err


def test_throughput_reruns_fill_only_the_cells_without_steps_per_s(tmp_path: Path) -> None:
    """Issue 38.4: records from before timing get the steps/s of a re-run with today's code, marked so;
    a cell that has its own rate keeps it, and the re-runs' scores never enter any cell."""
    spec = _tree(tmp_path)  # s1: agent a with steps/s, agent b without
    before = build_cells(load_spec(spec), reps=200)
    _record(tmp_path / "s1/rerun", "a", 0, 0.0, [0.0, 0.0, 0.0], seconds=1.0)  # 1000 steps/s
    _record(tmp_path / "s1/rerun", "b", 0, 0.0, [0.0, 0.0, 0.0], seconds=4.0)  # 250 steps/s
    spec.write_text(SPEC.replace("[s1/records]\n", "[s1/records]\n    throughput: [s1/rerun]\n"))
    cells = build_cells(load_spec(spec), reps=200)
    a, b = cells[("a", "s1")], cells[("b", "s1")]
    assert a.steps_per_s == before[("a", "s1")].steps_per_s == 100.0 and a.rerun_steps_per_s is None
    assert b.steps_per_s is None and b.rerun_steps_per_s == 250.0
    old = before[("b", "s1")]
    assert (b.train, b.ood, b.runs) == (old.train, old.ood, old.runs)
    page = tmp_path / "page.md"
    write_leaderboard(spec, page, "python train.py leaderboard", reps=200)
    row = next(line for line in page.read_text().splitlines() if line.startswith("| b |"))
    assert "250 steps/s (re-run)" in row.split(" | ")[1], row


def test_runs_of_one_preset_under_other_settings_are_a_row_of_their_own(tmp_path: Path) -> None:
    """Issue 41's rows (an agent's own tuning grid, an ablation): a records folder renamed to a row of
    'agents' gives that row the same statistics the runs give under their own name, and its model size is
    measured from the preset the records name; a row outside 'agents' is refused."""
    rng = np.random.default_rng(1)
    job = {"agent": "lstm_ppo", "suite": "popgym-repeat-previous", "overrides": {}}
    for seed in range(4):
        _record(tmp_path / "main/records", "lstm_ppo", seed, 0.9, list(rng.random(2)), job=job)
        wide = {**job, "overrides": {"policy_kwargs.lstm_hidden_size": 264}}
        _record(tmp_path / "own/records", "lstm_ppo", seed, 0.7, list(rng.random(2)), job=wide)
    spec = tmp_path / "leaderboard.yml"
    spec.write_text(
        "agents: [lstm_ppo, lstm_ppo (own grid)]\nsuites:\n  popgym-repeat-previous:\n    records:\n"
        "      - main/records\n      - {folder: own/records, rename: {lstm_ppo: lstm_ppo (own grid)}}\n"
    )
    cells = build_cells(load_spec(spec), reps=200)
    own = cells[("lstm_ppo (own grid)", "popgym-repeat-previous")]
    plain = cells[("lstm_ppo", "popgym-repeat-previous")]
    assert [r.train for r in own.runs] == [0.7] * 4 and [r.train for r in plain.runs] == [0.9] * 4
    sizes = cell_sizes(load_spec(spec), cells)
    suite = "popgym-repeat-previous"
    assert sizes[("lstm_ppo (own grid)", suite)].core > sizes[("lstm_ppo", suite)].core  # width 264
    text = spec.read_text().replace("rename: {lstm_ppo: lstm_ppo (own grid)}", "rename: {lstm_ppo: other}")
    spec.write_text(text)
    with pytest.raises(UserError, match="'rename' gives rows other, which are not in 'agents'"):
        load_spec(spec)
