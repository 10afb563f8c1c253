"""The ``archscale`` command line: thin verbs over the public functions.

    archscale train [RECIPE] [--set key=value ...] [--out DIR]
    archscale resolve [RECIPE] [--set ...] [--world-size N] [--json] [--depths 8,12,16]
    archscale sweep | fit | coord-check ...   (archscale/scaling/cli.py)
    archscale list [KIND] [--all]
    archscale data prepare|train-tokenizer|inspect ...
    archscale generate RUN_DIR --prompt TEXT [--stop TEXT ...]
    archscale eval lm-eval|phonebook|niah|length RUN ...   (archscale/eval/cli.py)

RECIPE is a registered recipe name (``archscale list recipes``) or ``path/to/file.py:function`` /
``package.module:function`` naming a function that returns a Recipe.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from archscale import registry as reg

DEFAULT_RECIPE = "default"


class CLIError(Exception):
    """An error for the user: printed without a traceback, exit code 2."""


# --------------------------------------------------------------------------------------------- recipes
def load_recipe(ref: str | None, overrides: Sequence[str] = ()) -> Any:
    """Resolve a recipe reference (registered name or ``file.py:function``) and apply ``--set`` overrides."""
    from archscale.recipe import Recipe, apply_overrides, build_recipe

    ref = ref or DEFAULT_RECIPE
    factory = _recipe_factory(ref)
    recipe = factory()
    if not isinstance(recipe, Recipe):
        raise CLIError(f"{ref} returned {type(recipe).__name__}, not an archscale Recipe")
    # Validate again: `model_copy(update=...)` in a recipe function skips validation.
    recipe = build_recipe(recipe.model_dump(mode="json", warnings=False))
    return apply_overrides(recipe, list(overrides)) if overrides else recipe


def _recipe_factory(ref: str) -> Callable[[], Any]:
    target, sep, func = ref.rpartition(":")
    if not sep:  # a registered name
        try:
            return reg.recipes.get(ref)
        except reg.RegistryError as exc:
            raise CLIError(f"{exc}. Or pass path/to/file.py:function.") from None
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise CLIError(f"Recipe file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"_archscale_recipe_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise CLIError(f"Cannot import recipe module '{target}': {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise CLIError(f"'{target}' has no function '{func}'. Functions there: {', '.join(names) or '(none)'}")
    return fn


# --------------------------------------------------------------------------------------------- verbs
def cmd_list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(reg.ALL_REGISTRIES)
    for kind in kinds:
        if kind not in reg.ALL_REGISTRIES:
            raise CLIError(f"Unknown registry '{kind}'. Available: {', '.join(reg.ALL_REGISTRIES)}")
    if args.markdown:
        print(registry_markdown(kinds))
        return 0
    for kind in kinds:
        registry = reg.ALL_REGISTRIES[kind]
        print(f"{kind}:")
        entries = registry.entries()
        if not entries:
            print("  (none)")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            line = f"  {entry.name:<{width}}  {entry.origin}"
            if args.all:
                try:
                    fields = registry.config_model(entry.name).model_fields
                    line += "\n      params: " + (", ".join(fields) if fields else "(none)")
                    summary = _summary(entry.obj)
                    if summary:
                        line += f"\n      {summary}"
                except reg.PluginLoadError as exc:
                    line += f"\n      BROKEN: {exc}"
            print(line)
    return 0


def _summary(obj: Any) -> str:
    """The first paragraph of an entry's docstring, on one line."""
    doc = (getattr(obj, "__doc__", "") or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def registry_markdown(kinds: Sequence[str]) -> str:
    """The registries as a markdown reference: per entry its origin, summary and a table of its params (type,
    default, description). ``archscale list --markdown`` prints it; docs/gen_reference.py commits it."""
    from pydantic_core import PydanticUndefined

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out: list[str] = []
    for kind in kinds:
        registry = reg.ALL_REGISTRIES[kind]
        out += [f"## {kind}", ""]
        for entry in registry.entries():
            out += [f"### `{entry.name}`", "", f"From `{entry.origin}`.", ""]
            try:
                summary, fields = _summary(entry.obj), registry.config_model(entry.name).model_fields
            except reg.PluginLoadError as exc:
                out += [f"BROKEN: {exc}", ""]
                continue
            if summary:
                out += [summary, ""]
            if not fields:
                out += ["No params.", ""]
                continue
            out += ["| param | type | default | description |", "|---|---|---|---|"]
            for name, field in fields.items():
                kind_text = getattr(field.annotation, "__name__", None) if isinstance(field.annotation, type) else None
                kind_text = kind_text or str(field.annotation).replace("typing.", "")
                if field.default is PydanticUndefined and field.default_factory is None:
                    default = "required"
                else:
                    value = field.get_default(call_default_factory=True)
                    default = f"`{json.dumps(value, default=str, ensure_ascii=False)}`"
                out.append(f"| `{name}` | `{cell(kind_text)}` | {cell(default)} | {cell(field.description or '')} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def cmd_resolve(args: argparse.Namespace) -> int:
    from archscale.recipe import resolve

    recipe = load_recipe(args.recipe, args.set)
    if args.depths:
        from archscale.scaling.sweep import depth_table, resolve_depths

        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in resolve_depths(recipe, args.depths, args.world_size)]))
        else:
            print(f"recipe: {recipe.name}   architecture: {recipe.model.name}   world size: {args.world_size}")
            print(depth_table(recipe, args.depths, args.world_size))
        return 0
    resolved = resolve(recipe, world_size=args.world_size)
    if args.json:
        print(resolved.to_json())
    else:
        print(f"recipe: {recipe.name}   architecture: {recipe.model.name}   world size: {args.world_size}")
        print(resolved.table())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from archscale.train.trainer import Trainer

    overrides = list(args.set)
    if args.out:
        overrides.append(f"system.out_dir={json.dumps(args.out)}")
    recipe = load_recipe(args.recipe, overrides)
    result = Trainer(recipe).fit()
    if result.global_rank == 0:  # every process of a multi-process job returns a result: report it once
        print(f"run directory: {result.run_dir}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from archscale.train.run_dir import load_for_inference
    from archscale.eval.generate import generate_text

    model, tokenizer = load_for_inference(args.run_dir, checkpoint=args.checkpoint)
    for text in generate_text(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        num_samples=args.num_samples,
        stop=args.stop,
    ):
        print(text)
        print("-" * 40)
    return 0


# --------------------------------------------------------------------------------------------- parser
def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help=f"registered name or file.py:function (default: {DEFAULT_RECIPE})")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set optimizer.lr=1e-3 --set model.params.depth=8 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    from archscale import __version__

    parser = argparse.ArgumentParser(
        prog="archscale", description="Language-model pretraining research on architectures and scaling laws."
    )
    parser.add_argument("--version", action="version", version=f"archscale {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    p = sub.add_parser("train", help="train a model from a recipe", description="Train a model from a recipe.")
    _add_recipe_args(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "resolve",
        help="print every derived number of a recipe",
        description="Print every derived number of a recipe (sizes, N, FLOPs, batch, steps, per-role LR/WD) "
        "with the rule that produced it.",
    )
    _add_recipe_args(p)
    p.add_argument("--world-size", type=int, default=1, help="number of data-parallel processes (default 1)")
    p.add_argument("--json", action="store_true", help="print the ResolvedRecipe as JSON")
    p.add_argument("--depths", type=lambda t: [int(x) for x in t.split(",") if x.strip()], default=None,
                   help="resolve at each depth (model.params.depth) into one table, e.g. 8,12,16,20,24")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("list", help="list registered components and where they come from")
    p.add_argument("kind", nargs="?", default=None, help=f"one of: {', '.join(reg.ALL_REGISTRIES)}")
    p.add_argument("--all", action="store_true", help="also show each entry's params and summary")
    p.add_argument("--markdown", action="store_true",
                   help="print a markdown reference (params with types, defaults, descriptions); docs/reference.md")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("generate", help="sample text from a trained run")
    p.add_argument("run_dir", help="run directory written by `archscale train`")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the latest in the run directory)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop a sample when its continuation contains TEXT, cut before it (repeatable)")
    p.set_defaults(func=cmd_generate)

    from archscale.data.cli import add_subparser as add_data

    add_data(sub)
    from archscale.scaling.cli import add_subparser as add_scaling  # sweep, fit, coord-check

    add_scaling(sub)
    from archscale.eval.cli import add_subparser as add_eval  # lm-eval, phonebook, niah, length

    add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from archscale.recipe import RecipeError, describe_validation_error

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, RecipeError, reg.RegistryError) as exc:
        print(f"archscale {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a Recipe(...) built directly in a recipe file
        print(f"archscale {args.verb}: error: invalid recipe:\n{describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"archscale {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
