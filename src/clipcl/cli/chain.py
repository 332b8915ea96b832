"""Commands about single chains and models: score, chain run, zeroshot, pretrain-tiny."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress
from rich.table import Table

from clipcl.cli.common import (
    _bars,
    _fmt,
    _print_matrix,
    _print_metrics,
    _tick,
    app,
    chain_app,
    out,
)
from clipcl.errors import ClipclError, did_you_mean
from clipcl.progress import ChainProgress


@app.command()
def score(
    file: Path = typer.Argument(
        ...,
        help="Accuracy matrix: .csv, .npy or .json (rows = after"
        " task t, columns = eval task, training order).",
    ),
    protocol: str = typer.Option(..., "--protocol", help="mtil (task-incremental) or cil."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    fraction: bool = typer.Option(
        False, "--fraction", help="The file holds fractions in [0, 1]: multiply by 100."
    ),
) -> None:
    """Score an accuracy matrix (MTIL: Transfer/Avg/Last; CIL: Avg/Last/Forgetting/BWT, with
    Forgetting both in the seeds' convention and Chaudhry et al.'s)."""
    from clipcl.results.matrix_io import load_matrix, percent_matrix
    from clipcl.results.metrics import cil_metrics, mtil_metrics

    protocol = protocol.lower()
    if protocol not in {"mtil", "cil"}:
        raise ClipclError(
            f"--protocol '{protocol}'{did_you_mean(protocol, ['mtil', 'cil'])}: allowed: mtil, cil"
        )
    loaded = load_matrix(file)
    if protocol == "mtil" and loaded.counts is not None:
        raise ClipclError(
            f"{file}: 'counts' weights the class-incremental accuracy and applies to "
            "--protocol cil only (MTIL metrics are plain means); remove it or use --protocol cil"
        )
    loaded.matrix = percent_matrix(file, loaded.matrix, fraction)
    if protocol == "mtil":
        metrics = mtil_metrics(loaded.matrix).to_dict()
    else:
        metrics = cil_metrics(loaded.matrix, counts=loaded.counts).to_dict()
    if as_json:
        print(json.dumps(metrics))
        return
    tasks = loaded.tasks or [f"task {i + 1}" for i in range(loaded.matrix.shape[0])]
    _print_matrix(tasks, [[None if v != v else float(v) for v in r] for r in loaded.matrix])
    _print_metrics(protocol, metrics)


class _RichChainProgress(ChainProgress):
    """Draws a bar per task on stderr (plain lines when stderr is a log file)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[int, Any] = {}

    def message(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]")

    def task_started(self, index: int, name: str, steps: int) -> None:
        self.bars[index] = self.progress.add_task(f"task {index + 1} {name}", total=steps)

    def step(self, index: int, step: int, steps: int, loss: float) -> None:
        _tick(self.progress, self.bars[index], f"task {index + 1}", step, steps, loss)

    def task_finished(self, index: int, name: str, accuracies: list[float]) -> None:
        accs = " ".join(f"{a:.1f}" for a in accuracies)
        self.progress.console.print(f"task {index + 1} ({name}) done; accuracies: {accs}")


@chain_app.command("run")
def chain_run(
    benchmark: str = typer.Option(..., "--benchmark", help="Benchmark name, e.g. smoke."),
    method: str = typer.Option(..., "--method", help="Method name, e.g. finetune."),
    model: str = typer.Option("ViT-B-16", "--model", help="open_clip architecture or 'tiny'."),
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="Weights: local file, cached open_clip tag, none."
    ),
    seed: int = typer.Option(0, "--seed", help="Chain seed."),
    root: Path = typer.Option(
        Path("runs"), "--root", help="Run root; the chain uses ROOT/chains/CHAIN_ID."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a spec key, e.g. train.lr=1e-4 or method.train_mode=image."
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run one chain locally (resumes when re-run) and print its matrix and metrics."""
    from clipcl.models import resolve_arch, resolve_pretrained
    from clipcl.results.records import RunDir
    from clipcl.workers import ChainSpec, run_chain

    data: dict[str, Any] = {
        "model": {"arch": model, "pretrained": pretrained},
        "benchmark": benchmark,
        "method": {"name": method},
        "seed": seed,
    }
    spec = ChainSpec.build(data, source="chain run", overrides=overrides)
    resolve_pretrained(resolve_arch(spec.model.arch), spec.model.pretrained)
    run_dir = RunDir.of(root, spec.chain_id).path
    with _bars(transient=as_json) as bars:
        result = run_chain(
            spec, run_dir, data_root=data_root, device=device, progress=_RichChainProgress(bars)
        )
    payload = result.to_json()
    if as_json:
        print(
            json.dumps(
                {k: payload[k] for k in ("chain_id", "protocol", "tasks", "matrix", "metrics")}
            )
        )
        return
    _print_matrix(payload["tasks"], payload["matrix"], payload["zeroshot"])
    _print_metrics(payload["protocol"], payload["metrics"])


def _zeroshot_table(
    model, benchmark_name: str, data_root: str | None = None, batch_size: int = 256
) -> dict[str, dict[str, float | int]]:
    from clipcl.data import get_benchmark
    from clipcl.results.records import ZEROSHOT
    from clipcl.workers.evaluate import evaluate

    bench = get_benchmark(benchmark_name, data_root=data_root)
    if bench.protocol == "cil":
        raise ClipclError(
            f"zeroshot: '{benchmark_name}' is class-incremental; use a task-"
            "incremental benchmark such as mini-mtil"
        )
    rows = evaluate(model, bench, ZEROSHOT, "zeroshot", batch_size=batch_size)
    return {
        r.eval_name: {
            "accuracy": round(r.top1, 4),
            "num_classes": bench.tasks[r.eval_task].num_classes,
        }
        for r in rows
    }


@app.command()
def zeroshot(
    model: str = typer.Option("tiny", "--model", help="open_clip architecture or 'tiny'."),
    benchmark: str = typer.Option("mini-mtil", "--benchmark", help="Task-incremental benchmark."),
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="Weights (default: the architecture's default weights)."
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Zero-shot accuracy of a CLIP on every dataset of a benchmark."""
    from clipcl.data import check_benchmark_name
    from clipcl.models import ModelConfig, build_model, default_pretrained, pick_device

    check_benchmark_name(benchmark)
    weights = default_pretrained(model) if pretrained is None else pretrained
    clip = build_model(ModelConfig(arch=model, pretrained=weights), pick_device(device))
    table = _zeroshot_table(clip, benchmark, data_root)
    if as_json:
        print(json.dumps({"datasets": table}))
        return
    t = Table(title=f"zero-shot accuracy (%) of {model} ({weights}) on {benchmark}")
    t.add_column("dataset")
    t.add_column("classes", justify="right")
    t.add_column("chance", justify="right")
    t.add_column("accuracy", justify="right")
    for name, row in table.items():
        t.add_row(
            name, str(row["num_classes"]), _fmt(100 / row["num_classes"]), _fmt(row["accuracy"])
        )
    out.print(t)


@app.command("pretrain-tiny")
def pretrain_tiny_cmd(
    out_path: Path = typer.Option(
        ...,
        "--out",
        help="Where to write the weights (.pt); the provenance goes next to it (.json).",
    ),
    steps: int = typer.Option(2500, "--steps", min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(256, "--batch-size", min=2, help="Captioned images per step."),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="AdamW peak learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data."),
) -> None:
    """Pretrain the tiny CLIP contrastively on the procedural world (deterministic, CPU)."""
    import time

    from clipcl.models.pretrain import pretrain_tiny, provenance, save_pretrained

    if out_path.suffix != ".pt":
        raise ClipclError(f"--out '{out_path}': expected a .pt file name")
    start = time.time()
    with _bars() as bars:
        bar = bars.add_task("pretraining", total=steps)
        model = pretrain_tiny(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            on_step=lambda s, n, loss: _tick(bars, bar, "pretraining", s, n, loss),
        )
    seconds = time.time() - start
    table = _zeroshot_table(model, "mini-mtil")
    args = {"out": str(out_path), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    sha = save_pretrained(model, out_path, provenance(args, seconds, table))
    out.print(f"wrote {out_path} (sha256 {sha[:12]}) in {seconds / 60:.1f} min")
    for name, row in table.items():
        out.print(f"  {name:16s} {row['accuracy']:6.1f}%  (chance {100 / row['num_classes']:.1f}%)")


# typer vendors click; its usage errors (missing option, bad int) share this base class.


@app.command()
def layers(
    model: str = typer.Argument("tiny", help="open_clip architecture or 'tiny'."),
    linear_only: bool = typer.Option(
        False,
        "--linear-only",
        help="Only the linear layers, with the config names that select them.",
    ),
    params: bool = typer.Option(False, "--params", help="Every parameter with its shape."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The layers of a CLIP (randomly initialised: shapes only, nothing is loaded): its modules,
    its linear layers (``--linear-only``: the names ``lora.targets`` and ``gpm.layers`` take), or
    its parameters (``--params``)."""
    import torch

    from clipcl.models import ModelConfig, build_model
    from clipcl.models.layers import linear_layers, modules, parameters

    if linear_only and params:
        raise ClipclError("--linear-only and --params list different things: pass one")
    clip = build_model(ModelConfig(arch=model, pretrained=None), torch.device("cpu")).clip
    if params:
        rows = parameters(clip)
        total = sum(n for _, _, n in rows)
        if as_json:
            print(json.dumps({"parameters": [{"name": n, "shape": list(s)} for n, s, _ in rows]}))
            return
        t = Table(title=f"parameters of {model}: {len(rows)} tensors, {total:,} values")
        for col in ("parameter", "shape", "values"):
            t.add_column(col, justify="right" if col == "values" else "left")
        for name, shape, n in rows:
            t.add_row(name, " × ".join(map(str, shape)) or "scalar", f"{n:,}")
        out.print(t)
        return
    if linear_only:
        found = linear_layers(clip)
        if as_json:
            print(
                json.dumps(
                    {
                        "linear": [
                            {
                                "name": x.name,
                                "shape": list(x.shape),
                                "tower": x.tower,
                                "block": x.block,
                                "kind": x.kind,
                                "named_by": x.named_by(),
                            }
                            for x in found
                        ]
                    }
                )
            )
            return
        t = Table(title=f"linear layers of {model}: {len(found)}")
        for col in ("layer", "shape (out × in)", "tower", "block", "kind", "named by"):
            t.add_column(col)
        for x in found:
            t.add_row(
                x.name,
                " × ".join(map(str, x.shape)),
                x.tower or "-",
                "-" if x.block is None else str(x.block),
                x.kind or "-",
                ", ".join(x.named_by()) or "-",
            )
        out.print(t)
        return
    listed = modules(clip)
    if as_json:
        print(json.dumps({"modules": [{"name": n, "type": k} for n, k in listed]}))
        return
    t = Table(title=f"modules of {model}: {len(listed)}")
    t.add_column("module")
    t.add_column("type")
    for name, kind in listed:
        t.add_row(name, kind)
    out.print(t)
