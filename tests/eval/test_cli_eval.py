"""`archscale eval ...` and `archscale generate --stop` on a tiny trained run, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archscale.cli import main


def test_phonebook_niah_length(tiny_run: Path, tiny_sambay_run: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "phonebook", str(tiny_run), "--entries", "3,5", "--queries", "2", "--device", "cpu"]) == 0
    report = json.loads((tiny_run / "eval" / "phonebook.json").read_text())
    assert [r["num_entries"] for r in report["results"]] == [3, 5]
    assert (tiny_run / "eval" / "phonebook.png").exists()

    out = tmp_path / "niah"
    assert main(["eval", "niah", str(tiny_run), "--lengths", "200", "--depths", "0,0.5", "--out", str(out)]) == 0
    assert len(json.loads((out / "niah.json").read_text())["results"]) == 2

    out = tmp_path / "length"
    assert main(["eval", "length", str(tiny_run), str(tiny_sambay_run), "--factors", "1,2", "--tokens", "128",
                 "--batch-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sambay" in printed and "2x" in printed
    assert len(json.loads((out / "length_extrapolation.json").read_text())["runs"]) == 2


def test_lm_eval_with_json_tasks(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from eval_helpers import local_tasks

    tasks = local_tasks(tmp_path / "tasks")
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks[:2]))
    ckpt = max((tiny_run / "checkpoints").iterdir())  # a checkpoint file works as RUN too
    assert main(["eval", "lm-eval", str(ckpt), "--tasks", str(path), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "lm_eval.json").read_text())["results"]
    assert set(results) == {"tiny_mc", "tiny_ppl"}
    assert 0.0 <= results["tiny_mc"]["acc,none"] <= 1.0


def test_generate_stop(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", str(tiny_run), "--prompt", "The", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(args) == 0
    full = capsys.readouterr().out.split("\n" + "-" * 40)[0]
    stop = full[len("The") + 1 : len("The") + 3]
    assert len(stop) == 2
    assert main([*args, "--stop", stop]) == 0
    cut = capsys.readouterr().out.split("\n" + "-" * 40)[0]
    assert cut == full[: full.index(stop, len("The"))]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "phonebook", "{run}"], "give --entries"),
        (["eval", "niah", "/nonexistent/run", "--lengths", "64"], "does not exist"),
        (["eval", "lm-eval", "{run}", "--tasks", "missing.json"], "does not exist"),
    ],
)
def test_errors_are_one_line(tiny_run: Path, argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main([a.format(run=tiny_run) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


DOC_LM_EVAL = "archscale eval lm-eval runs/tiny --tasks tasks.json --log-samples"  # docs/evaluation.md


def test_lm_eval_docs_command(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline lm-eval command of docs/evaluation.md, run as written (in a directory laid out like the doc's)."""
    pytest.importorskip("lm_eval")
    import shlex

    from eval_helpers import local_tasks

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tiny_run, target_is_directory=True)
    (tmp_path / "tasks.json").write_text(json.dumps(local_tasks(tmp_path / "data")[:1]))
    argv = shlex.split(DOC_LM_EVAL)
    assert argv[0] == "archscale" and main(argv[1:]) == 0
    saved = json.loads((tiny_run / "eval" / "lm_eval.json").read_text())
    assert "tiny_mc" in saved["results"] and len(saved["samples"]["tiny_mc"]) == 5
