"""Reproduce the paper's Tables 1 and 2 on the synthetic stains.

    python benchmarks/paper_table.py --quick                 # ~55 min on 2 CPU cores, 1 seed
    python benchmarks/paper_table.py --seeds 3               # FULL budget (meant for a GPU)
    python benchmarks/paper_table.py --quick --only source-only,uda-sed --set alpha_e=0.03
    python benchmarks/paper_table.py --quick --render-only   # tables + chart from the JSONs
    python benchmarks/paper_table.py --list                  # every method's exact config

S = synthetic PASM, T = synthetic Masson, generated once per data spec with the public
``stainadapt synth`` command into ``OUT/data-...``. Every method is trained through the
library (``stainadapt.engine.trainer.train``, the same call as ``stainadapt train``) with
the ``TrainConfig`` its recipe gives (``stainadapt.recipes``: ``--budget quick`` is the
demo's recipe, ``full`` its GPU-sized schedule, ``tiny`` the tests'; ``--set KEY=VALUE``
overrides a field for one invocation). Each model is scored like ``stainadapt demo``
scores its runs: the model the run selected, on the whole held-out images of the run's own
validation splits (``stainadapt.data.splits.held_out``), with ``trainer.evaluate_model``.

The paper's schedule: per seed the ``source-only`` row (s0 epochs) is the shared source
G; every row with a discriminator starts from its model (``TrainConfig.init``) for d0 D
epochs and ``adv`` adversarial epochs; ``source-only-longer`` trains the same G ``adv``
more epochs on L_seg alone (as many G updates as the adapted rows). The rows, their
schedules and the paper's numbers are in ``paper_methods.py``; the Markdown and the chart
are written by ``paper_render.py`` from the result JSONs only (``--render-only``).

Resuming: every finished run writes ``OUT/results/<id>-seed<k>.json`` at once. A run whose
JSON exists, succeeded and holds the same configuration (for a run that starts from or
evaluates another: the same training of that run, by its ``uid``) is skipped, so an
interrupted invocation continues where it stopped; anything else is run again, and a
half-trained run folder with the same configuration resumes from its last epoch.
Dependencies run first and ``--only`` adds them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from paper_methods import BY_ID, METHODS, SOURCE, Method, disc_specs, fmt, schedule_epochs
from paper_render import clock, read_json, render

from stainadapt.recipes import PAPER_FULL, PAPER_QUICK, PAPER_TINY, Recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MD = REPO / "benchmarks" / "PAPER_TABLE.md"
BUDGETS = {"tiny": PAPER_TINY, "quick": PAPER_QUICK, "full": PAPER_FULL}
DATA_FIELDS = ("data_n", "data_size", "data_seed")


@dataclass(frozen=True)
class Data:
    root: Path
    S: Path
    T: Path
    command: str


def ensure_data(budget: Recipe, out: Path) -> Data:
    """The synthetic PASM and Masson sets, made once with ``stainadapt synth``."""
    root = out / f"data-n{budget.data_n}-s{budget.data_size}-seed{budget.data_seed}"
    args = ["synth", "--stain", "pasm", "--stain", "masson", "-n", str(budget.data_n),
            "--size", str(budget.data_size), "--seed", str(budget.data_seed)]
    command = "stainadapt " + shlex.join([args[0], str(root), *args[1:]])
    if not (root / "README.txt").is_file():
        tmp = root.with_name(root.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"generating the data: {command}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "stainadapt", args[0], str(tmp), *args[1:]],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "README.txt").is_file():
            raise SystemExit(f"stainadapt synth failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
        os.replace(tmp, root)
    return Data(root, root / "pasm", root / "masson", command)


def target_train_folder(data: Data, cfg: Any) -> Path:
    """Masson's training split of the run ``cfg`` as a domain folder (links).

    For "trained on T": the trainer holds Masson out as the *target*; trained on Masson as
    its source it would split it differently and could train on the held-out test tiles.
    This folder holds only the training split Masson has as the target of ``cfg``.
    """
    from stainadapt.data.folders import scan_domain
    from stainadapt.data.splits import run_splits

    folder = data.root / f"masson-train-split{cfg.seed + 1}-val{cfg.val_fraction:g}"
    if (folder / "DONE").is_file():
        return folder
    train, _ = run_splits(scan_domain(data.T, require_masks=True), cfg, "target")
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for s in train:
        for src, sub in ((s.image, "images"), (s.mask, "masks")):
            dst = folder / sub / Path(src).name
            try:
                os.symlink(Path(src).resolve(), dst)
            except OSError:
                shutil.copyfile(src, dst)
    (folder / "DONE").write_text("\n".join(s.name for s in train) + "\n")
    return folder


def run_dir_of(out: Path, method_id: str, seed: int) -> Path:
    return out / "runs" / f"{method_id}-seed{seed}"


def result_path(out: Path, method_id: str, seed: int) -> Path:
    return out / "results" / f"{method_id}-seed{seed}.json"


def build_config(method: Method, budget: Recipe, seed: int, data: Data, run_dir: Path,
                 device: str) -> Any:
    """The run's ``TrainConfig``: the recipe's, with the row's mode, discriminators,
    schedule and extra fields. A row with ``init`` starts G from the same seed's run of
    that row, the folder beside ``run_dir``."""
    from stainadapt.config import TrainConfig

    if method.mode == "eval":
        raise ValueError(f"{method.id} is evaluated, not trained")
    extra: dict[str, Any] = {}
    defaults = TrainConfig()
    for key, template in method.extra.items():
        default = getattr(defaults, key)
        kind = str if default is None else type(default)  # e.g. select: None -> a name
        text = fmt(template, budget)
        extra[key] = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
    if method.init is not None:
        extra["init"] = str(run_dir.parent / f"{method.init}-seed{seed}")
    cfg = budget.config(method.mode, source=str(data.S), target=str(data.T), out=str(run_dir),
                        seed=seed, discs=disc_specs(method, budget), device=device,
                        **schedule_epochs(method, budget), **extra)
    if method.source == "T":
        cfg = replace(cfg, source=str(target_train_folder(data, cfg)))
    return cfg.validate()


def source_config(budget: Recipe, seed: int, data: Data, out: Path, device: str) -> Any:
    return build_config(BY_ID[SOURCE], budget, seed, data, run_dir_of(out, SOURCE, seed), device)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without what only says where things are (``init`` is a folder: which
    training is in it is ``init_run``), and without the fields that change nothing where
    there is no discriminator (``adv_loss``, ``disc_lr``) or no self-training."""
    skip = {"out", "source", "target", "device", "reference", "init"}
    if not config.get("discs"):
        skip |= {"adv_loss", "disc_lr"}
    config = {"self_train_rounds": 0, **config}
    if not config["self_train_rounds"]:
        skip.add("self_train_epochs")
    return {k: v for k, v in config.items() if k not in skip}


def run_identity(record: dict[str, Any] | None) -> str | None:
    """The ``uid`` of one training (older JSONs: a hash of date and config); a dependent
    records its dependency's, so retraining that makes the dependent run again."""
    if record is None or record.get("status") != "ok":
        return None
    if record.get("uid"):
        return str(record["uid"])
    blob = json.dumps({"date": record.get("date"), "config": record.get("config")},
                      sort_keys=True, default=str)
    return "h" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def expected_config(method: Method, budget: Recipe, seed: int, data: Data, out: Path,
                    device: str) -> dict[str, Any]:
    """What a result must hold to be reused: a trained row's TrainConfig (plus the training
    it starts from), an evaluated row's base run's config and training."""
    dep = method.depends_on
    dep_uid = run_identity(read_json(result_path(out, dep, seed))) if dep else None
    if method.mode == "eval":
        base = (read_json(result_path(out, dep or "", seed)) or {}).get("config") or {}
        return {**base, "eval_normalizer": method.normalizer, "base_run": dep_uid}
    cfg = build_config(method, budget, seed, data, run_dir_of(out, method.id, seed), device)
    return {**cfg.as_dict(), **({"init_run": dep_uid} if dep else {})}


def is_done(record: dict[str, Any] | None, expected: dict[str, Any], budget: Recipe) -> bool:
    """The stored result succeeded, on the same data, with the same configuration."""
    stored = (record or {}).get("budget") or {}
    return (record is not None and record.get("status") == "ok"
            and all(stored.get(k) == getattr(budget, k) for k in DATA_FIELDS)
            and comparable(record.get("config") or {}) == comparable(expected))


def evaluate_run(run: Path, cfg: Any, data: Data, device: str,
                 normalizer: str | None) -> dict[str, Any]:
    """Dice and accuracy of ``run``'s model on the validation splits ``cfg`` held out."""
    from stainadapt.data.folders import scan_domain
    from stainadapt.data.io import read_image
    from stainadapt.data.splits import held_out, run_splits
    from stainadapt.engine.trainer import resolve_device
    from stainadapt.inference import evaluate_model, load_domain_images
    from stainadapt.registry import create
    from stainadapt.runs import load_model

    s_train, s_val = run_splits(scan_domain(data.S, require_masks=True), cfg, "source")
    t_val = held_out(scan_domain(data.T, require_masks=True), cfg, "target")
    dev = resolve_device(device)
    model, _ = load_model(run, device=dev)
    norm = None
    if normalizer is not None:  # fitted on a PASM training tile
        norm = create("normalizers", normalizer).fit(read_image(s_train[0].image))
        norm = norm.to(dev) if hasattr(norm, "to") else norm
    result = {dom: evaluate_model(model, load_domain_images(val, with_masks=True), dev,
                                  normalizer=norm)
              for dom, val in (("S", s_val), ("T", t_val))}
    result["eval_images"] = {"S": len(s_val), "T": len(t_val)}
    result["reference"] = str(s_train[0].image)
    return result


def train_or_resume(config: Any, verbose: bool) -> Any:
    """Train ``config``; a half-trained run folder with the same config resumes."""
    from stainadapt.config import dumps_toml
    from stainadapt.engine.trainer import resume, train

    run = Path(config.out)
    console = None
    if verbose:
        from rich.console import Console

        console = Console()
    if run.exists():
        cfg_file = run / "config.toml"
        same = cfg_file.is_file() and cfg_file.read_text(encoding="utf-8") == dumps_toml(config)
        if same and (run / "state.pt").is_file():
            print(f"    resuming {run} from its last epoch", flush=True)
            return resume(run, console=console)
        if not cfg_file.is_file() and any(run.iterdir()):
            raise RuntimeError(f"{run}: exists and is not a stainadapt run; remove it")
        shutil.rmtree(run)
    return train(config, console=console)


def run_one(method: Method, seed: int, budget: Recipe, data: Data, out: Path,
            args: argparse.Namespace, expected: dict[str, Any]) -> dict[str, Any]:
    """Train (or only evaluate) one method for one seed; returns its result record."""
    record: dict[str, Any] = {
        "id": method.id, "seed": seed, "paper": method.paper, "tables": method.tables,
        "mode": method.mode, "budget": asdict(budget), "data": data.command, "date": _now(),
        "uid": uuid.uuid4().hex, "host": _host(args.device), "threads": _threads(),
        "config": expected}
    t0 = time.perf_counter()
    if method.mode == "eval":
        run = run_dir_of(out, method.base or "", seed)
        cfg = source_config(budget, seed, data, out, args.device)
        record.update(run=str(run), normalizer=method.normalizer, train_seconds=0.0)
    else:
        cfg = build_config(method, budget, seed, data, run_dir_of(out, method.id, seed),
                           args.device)
        if method.init is not None and expected.get("init_run") is None:
            raise RuntimeError(f"its init run {method.init} seed {seed} has no result")
        result = train_or_resume(cfg, args.verbose)
        last = result.records[-1] if result.records else {}
        run = Path(cfg.out)
        record.update(run=str(run), init_run=expected.get("init_run"),
                      train_seconds=round(time.perf_counter() - t0, 2),
                      best_epoch=result.best_epoch, epochs=result.epochs,
                      skipped_steps=result.skipped_steps,
                      disc_acc_last_epoch=last.get("disc_acc") or {},
                      losses_last_epoch=last.get("losses") or {})
    t1 = time.perf_counter()
    record.update(evaluate_run(run, cfg, data, args.device, method.normalizer))
    record.update(eval_seconds=round(time.perf_counter() - t1, 2),
                  seconds=round(time.perf_counter() - t0, 2), status="ok")
    if method.mode != "eval" and not args.keep_state:
        (run / "state.pt").unlink(missing_ok=True)  # hundreds of MB per run at resnet34
    return record


def plan_methods(only: str | None) -> list[Method]:
    """The rows to run, every dependency (``base``, ``init``) included, before its
    dependents."""
    ids = [s.strip() for s in (only or ",".join(BY_ID)).split(",") if s.strip()]
    unknown = [i for i in ids if i not in BY_ID]
    if unknown:
        raise SystemExit(f"unknown method id(s) {', '.join(unknown)}; "
                         f"known: {', '.join(BY_ID)}")
    ordered: list[Method] = []

    def visit(m: Method) -> None:
        if m not in ordered:
            if m.depends_on is not None:
                visit(BY_ID[m.depends_on])
            ordered.append(m)

    for m in METHODS:
        if m.id in ids:
            visit(m)
    return ordered


def run_all(args: argparse.Namespace, budget: Recipe, out: Path) -> dict[str, Any]:
    """Every planned (method, seed) in order: skip it, train or evaluate it, or record its
    failure (retried by the next invocation). Ctrl-C propagates: the trainer has saved a
    resumable state."""
    from stainadapt.atomic import atomic_write_text

    seeds = list(range(args.seeds if args.seeds is not None else budget.seeds))
    methods = plan_methods(args.only)
    data = ensure_data(budget, out)
    plan = [(m, s) for s in seeds for m in methods]
    started = time.perf_counter()
    counts = {"trained": 0, "evaluated": 0, "skipped": 0, "failed": 0}
    for i, (method, seed) in enumerate(plan, 1):
        tag = f"[{i:>{len(str(len(plan)))}}/{len(plan)}] {method.id} seed {seed}"
        path = result_path(out, method.id, seed)
        try:
            expected = expected_config(method, budget, seed, data, out, args.device)
            if is_done(read_json(path), expected, budget):
                counts["skipped"] += 1
                print(f"{tag}: skip (result exists: {path})", flush=True)
                continue
            if method.depends_on and run_identity(
                    read_json(result_path(out, method.depends_on, seed))) is None:
                raise RuntimeError(f"{method.depends_on} seed {seed}, which it needs, has "
                                   "no result (failed?)")
            record = run_one(method, seed, budget, data, out, args, expected)
            outcome = "evaluated" if method.mode == "eval" else "trained"
            line = (f"{record['seconds']:.1f} s (train {record['train_seconds']:.1f} s) "
                    f"Masson Dice {record['T'].get('dice', float('nan')):.4f}, "
                    f"PASM Dice {record['S'].get('dice', float('nan')):.4f}")
        except KeyboardInterrupt:
            print(f"{tag}: interrupted; run the same command again to continue", flush=True)
            raise
        except Exception as exc:  # noqa: BLE001 - record it, go on with the other runs
            outcome, line = "failed", f"FAILED: {type(exc).__name__}: {exc}"
            record = {"id": method.id, "seed": seed, "status": "error", "date": _now(),
                      "error": f"{type(exc).__name__}: {exc}", "budget": asdict(budget)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        counts[outcome] += 1
        print(f"{tag}: {line}; elapsed {clock(time.perf_counter() - started)}", flush=True)
    return {"seeds": seeds, "methods": [m.id for m in methods], "counts": counts,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _host(device: str) -> str:
    try:
        from stainadapt.engine.trainer import resolve_device

        dev = resolve_device(device)
        if dev.type == "cuda":
            import torch

            return f"CUDA {torch.cuda.get_device_name(dev)}"
    except Exception:  # noqa: BLE001 - descriptive only
        pass
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def _threads() -> int:
    """CPU threads of this process's kernels: CPU results depend on it (RESULTS.md)."""
    import torch

    return torch.get_num_threads()


def apply_overrides(budget: Recipe, items: Sequence[str]) -> Recipe:
    """``--set key=value`` onto the recipe, typed by the field's current value."""
    names = {f.name for f in fields(Recipe)} - {"name"}
    changes: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip().replace("-", "_"), text.strip()
        if not eq or key not in names:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(sorted(names))}")
        current = getattr(budget, key)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(text)
                changes[key] = text.lower() in ("true", "1", "yes", "on")
            else:
                changes[key] = text if current is None else type(current)(text)
        except ValueError:
            raise SystemExit(f"--set {item!r}: {key} takes a {type(current).__name__}") from None
    return replace(budget, **changes) if changes else budget


def methods_listing(budget: Recipe) -> str:
    rows = []
    for m in METHODS:
        d = asdict(m)
        d["discs"] = disc_specs(m, budget)
        d["extra"] = {k: fmt(v, budget) for k, v in m.extra.items()}
        d["epochs"] = schedule_epochs(m, budget) if m.schedule else None
        rows.append(d)
    return json.dumps({"budget": asdict(budget), "methods": rows}, indent=2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="paper_table.py",
        description="Reproduce the paper's Tables 1 and 2 on the synthetic stains.")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full",
                   help="recipe size: quick (~55 min, 2 CPU cores), full (GPU), tiny (tests)")
    p.add_argument("--quick", action="store_true", help="same as --budget quick")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 (default: the budget's: quick 1, full 3)")
    p.add_argument("--out", type=Path, default=None,
                   help="runs, results and data (default: runs/paper-table-<budget>)")
    p.add_argument("--only", default=None, help="comma-separated method ids (see --list)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a recipe field (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--render-only", action="store_true",
                   help="only rebuild the Markdown and the chart from OUT/results/*.json")
    p.add_argument("--md", type=Path, default=DEFAULT_MD, help="Markdown output")
    p.add_argument("--png", type=Path, default=None,
                   help="chart output (default: paper_table.png beside the Markdown)")
    p.add_argument("--keep-state", action="store_true",
                   help="keep each run's state.pt (deleted by default once the result is in)")
    p.add_argument("--verbose", action="store_true", help="the trainer's own summary per run")
    p.add_argument("--list", action="store_true",
                   help="print the budget and every method's resolved configuration (JSON)")
    args = p.parse_args(argv)
    if args.quick:
        args.budget = "quick"
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    budget = apply_overrides(BUDGETS[args.budget], args.overrides)
    if args.list:
        print(methods_listing(budget))
        return 0
    out = args.out or Path("runs") / f"paper-table-{args.budget}"
    png = args.png or args.md.with_name("paper_table.png")
    command = "python benchmarks/paper_table.py " + shlex.join(
        list(sys.argv[1:] if argv is None else argv))
    failed = 0
    if not args.render_only:
        started = _now()
        try:
            summary = run_all(args, budget, out)
        except KeyboardInterrupt:
            print(f"interrupted: finished runs are in {out / 'results'}; the same command "
                  "continues", flush=True)
            return 130
        failed = summary["counts"]["failed"]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "invocations.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"command": command, "started": started, "finished": _now(),
                                 "budget": args.budget, **summary}, sort_keys=True) + "\n")
        print(f"done in {clock(summary['wall_seconds'])}: {summary['counts']}", flush=True)
    render(out, args.md, png)
    print(f"wrote {args.md} and {png}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
