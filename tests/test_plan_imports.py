"""Planning never imports torch or open_clip: ``plan()`` and ``clipcl plan`` in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SWEEP = (
    "name: light\nroot: {root}\nmodel: {{arch: tiny}}\nbenchmarks: [smoke, mini-cil, mtil]\n"
    "methods: {{zeroshot: {{}}, finetune: {{}}, nsp2: {{}}, wise-ft: {{}}}}\nseeds: [0, 1]\n"
)
HEAVY = ("torch", "open_clip")


def _sweep(tmp_path: Path, benchmarks: str = "smoke, mini-cil, mtil") -> Path:
    path = tmp_path / "light.yaml"
    path.write_text(
        SWEEP.format(root=tmp_path / "runs").replace("smoke, mini-cil, mtil", benchmarks)
    )
    return path


def test_plan_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from clipcl.orchestrator.plan import plan; "
        f"p = plan({str(_sweep(tmp_path))!r}); assert len(p.chains) == 24, len(p.chains); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_clipcl_plan_does_not_import_torch(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)  # mtil without --data-root: its datasets are named, not read
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "clipcl.cli", "plan", str(sweep)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "24 chains" in proc.stdout and "datasets not checked" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not imported.intersection(HEAVY), sorted(imported.intersection(HEAVY))
    assert "clipcl.orchestrator.plan" in imported  # the importtime listing is really there


def test_torch_free_arch_list_matches_open_clip() -> None:
    import open_clip

    from clipcl.models import config
    from clipcl.models.factory import register_project_configs

    register_project_configs()
    assert set(open_clip.list_models()) >= config._shipped_archs()
    tags = open_clip.list_pretrained_tags_by_model
    openai = {m for m in open_clip.list_models() if "openai" in tags(m)}
    assert openai == config.OPENAI_ARCHS
