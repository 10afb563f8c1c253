"""``archscale eval``: lm-eval tasks, Phonebook, needle in a haystack, and length extrapolation of trained runs.

    archscale eval lm-eval RUN --tasks lambada_openai,arc_easy [--limit 100] [--num-fewshot 0]
    archscale eval lm-eval RUN --tasks my_tasks.json              # task configs as JSON (offline local tasks)
    archscale eval phonebook RUN --entries 20,100,400 [--queries 20]
    archscale eval niah RUN --lengths 1024,4096 [--depths 0,0.5,1] [--haystack noise|corpus]
    archscale eval length RUN [RUN ...] [--factors 1,2,3,4]

RUN is a run directory, a checkpoint file inside one, or (lm-eval, phonebook, niah) a Hugging Face Llama
directory. Results go to ``RUN/eval/`` (JSON, plus a plot where one helps) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _user_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report a bad path, option or missing extra as a one-line CLI error (exit code 2), not a traceback."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from archscale.cli import CLIError
        from archscale.train.run_dir import RunDirError

        try:
            return fn(args)
        except (ValueError, FileNotFoundError, ImportError, RunDirError) as exc:
            raise CLIError(f"{args.eval_kind}: {exc}") from exc

    return wrapper


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _out_dir(args: argparse.Namespace, run: str) -> Path:
    if args.out:
        return Path(args.out)
    p = Path(run)
    return (p.parent if p.is_file() else p) / "eval"


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from archscale.eval.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.run, checkpoint=args.checkpoint, device=args.device)


def _task_list(spec: str) -> list[str | dict[str, Any]]:
    """Comma-separated task names; an item naming a ``.json`` file contributes the task config(s) it holds."""
    tasks: list[str | dict[str, Any]] = []
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        if item.endswith(".json"):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"--tasks: task config file {path} does not exist")
            loaded = json.loads(path.read_text())
            tasks.extend(loaded if isinstance(loaded, list) else [loaded])
        else:
            tasks.append(item)
    if not tasks:
        raise ValueError("--tasks is empty: name lm-eval tasks (e.g. lambada_openai,arc_easy) or a .json config")
    return tasks


@_user_errors
def cmd_lm_eval(args: argparse.Namespace) -> int:
    from archscale.eval.lm_eval_model import ArchscaleLM, evaluate

    tasks = _task_list(args.tasks)
    model, tokenizer = _load(args)
    lm = ArchscaleLM(model=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    results = evaluate(lm, tasks, num_fewshot=args.num_fewshot, limit=args.limit, include_path=args.include_path,
                       log_samples=args.log_samples)
    out = _out_dir(args, args.run)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lm_eval.json"
    keep = {k: results[k] for k in ("results", "versions", "n-shot", "config", "samples") if k in results}
    path.write_text(json.dumps(keep, indent=2, default=str))
    for task, metrics in results["results"].items():
        shown = ", ".join(f"{k.split(',')[0]}={v:.4g}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len")
        print(f"{task}: {shown}")
    print(f"results: {path}")
    return 0


@_user_errors
def cmd_phonebook(args: argparse.Namespace) -> int:
    from archscale.eval.phonebook import (
        entries_for_tokens,
        evaluate_phonebook,
        write_report,
    )

    model, tokenizer = _load(args)
    entries = list(args.entries or [])
    entries += [entries_for_tokens(tokenizer, n, seed=args.seed) for n in (args.lengths or [])]
    if not entries:
        raise ValueError("archscale eval phonebook: give --entries (book sizes) or --lengths (prompt tokens)")
    report = evaluate_phonebook(model, tokenizer, sorted(set(entries)), num_queries=args.queries, seed=args.seed,
                                batch_size=args.batch_size)
    report["run"] = str(args.run)
    json_path, png = write_report(report, _out_dir(args, args.run), label=Path(args.run).name)
    for r in report["results"]:
        print(f"entries {r['num_entries']:>6}  tokens {r['tokens']:>9.0f}  accuracy {r['accuracy']:.3f}  (n={r['n']})")
    print(f"results: {json_path}" + (f"  plot: {png}" if png else ""))
    return 0


@_user_errors
def cmd_niah(args: argparse.Namespace) -> int:
    from archscale.eval.niah import evaluate_niah, write_report

    model, tokenizer = _load(args)
    report = evaluate_niah(model, tokenizer, args.lengths, args.depths, haystack=args.haystack,
                           samples_per_cell=args.samples, seed=args.seed, batch_size=args.batch_size)
    report["run"] = str(args.run)
    json_path, png = write_report(report, _out_dir(args, args.run))
    for r in report["results"]:
        print(f"length {r['length']:>7}  depth {r['depth']:>5.2f}  accuracy {r['accuracy']:.3f}  (n={r['n']})")
    print(f"results: {json_path}" + (f"  plot: {png}" if png else ""))
    return 0


@_user_errors
def cmd_length(args: argparse.Namespace) -> int:
    from archscale.eval.validation import (
        comparison_table,
        length_extrapolation,
        write_report,
    )

    reports = [length_extrapolation(run, args.factors, tokens_per_factor=args.tokens, batch_size=args.batch_size,
                                    device=args.device) for run in args.runs]
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "eval")
    json_path, png = write_report(reports, out)
    print(comparison_table(reports))
    print(f"results: {json_path}" + (f"  plot: {png}" if png else ""))
    return 0


def _common(p: argparse.ArgumentParser, *, run: bool = True) -> None:
    if run:
        p.add_argument("run", help="run directory, checkpoint file, or Hugging Face Llama directory")
        p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the run's latest)")
    p.add_argument("--out", default=None, help="output directory (default: RUN/eval)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_subparser(sub: Any) -> None:
    """Add ``eval`` and its sub-commands to the top-level parser's sub-parsers."""
    p = sub.add_parser("eval", help="evaluate trained runs (lm-eval, phonebook, niah, length extrapolation)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="eval_kind", metavar="KIND")
    kinds.required = True

    q = kinds.add_parser("lm-eval", help="lm-evaluation-harness tasks through the archscale model adapter")
    _common(q)
    q.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval task names and/or .json files holding task configs")
    q.add_argument("--num-fewshot", type=int, default=None)
    q.add_argument("--limit", type=float, default=None, help="examples per task (a fraction when < 1)")
    q.add_argument("--max-length", type=int, default=None, help="context in tokens (default: training context)")
    q.add_argument("--include-path", default=None, help="directory of extra lm-eval task YAML files")
    q.add_argument("--log-samples", action="store_true", help="keep per-example outputs in the JSON")
    q.set_defaults(func=cmd_lm_eval)

    q = kinds.add_parser("phonebook", help="Phonebook lookup accuracy vs book length (Jelassi et al. 2024)")
    _common(q)
    q.add_argument("--entries", type=_ints, default=None, help="book sizes, e.g. 20,100,400")
    q.add_argument("--lengths", type=_ints, default=None, help="prompt lengths in tokens (converted to entries)")
    q.add_argument("--queries", type=int, default=20, help="lookups per book size")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_phonebook)

    q = kinds.add_parser("niah", help="needle in a haystack (RULER niah_single style), length × depth")
    _common(q)
    q.add_argument("--lengths", type=_ints, required=True, help="context lengths in tokens, e.g. 1024,4096")
    q.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="needle depths in [0, 1]")
    q.add_argument("--haystack", choices=["noise", "corpus"], default="noise")
    q.add_argument("--samples", type=int, default=1, help="samples per (length, depth)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_niah)

    q = kinds.add_parser("length", help="validation loss at 1x..4x the training context, runs compared")
    q.add_argument("runs", nargs="+", help="run directories to compare")
    _common(q, run=False)
    q.add_argument("--factors", type=_ints, default=[1, 2, 3, 4], help="multiples of the training context")
    q.add_argument("--tokens", type=int, default=1 << 16, help="validation tokens scored per factor")
    q.set_defaults(func=cmd_length)
