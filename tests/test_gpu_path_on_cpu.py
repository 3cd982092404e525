"""The parts of the GPU path that run on CPU, trained for real: bf16, activation checkpointing, ZeRO-2.

Each variant is one 2-worker rung (Ray Train + DeepSpeed over gloo), trained once in this
module (two at a time) and compared step by step with the fp32 / ZeRO-3 / no-checkpointing
reference, from the same seed and the same data. The reference is tests/test_pretrain.py's μP rung
`tiny` (`reference_fit`): trained here, on this module's cluster, it serves that module too.
"""

import json
import os
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_pretrain import MUP_SPEC, fit, reference_fit

from contracts.layout import RungPaths
from contracts.spec import load_spec
from models.export import load_encoder
from models.mae import normalize_video
from orchestrator import checkpoint as ckpt
from orchestrator.scheduler import init_local_ray

pytestmark = pytest.mark.slow

# tests/test_pretrain.py's μP spec: its rung `tiny` is the reference, with the precision, ZeRO stage and
# activation checkpointing of the defaults on CPU (fp32, 3, off).
STEPS = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Ray cluster for the module. Its workers count `torch.utils.checkpoint.checkpoint` calls,
    one file per process, so a test can tell whether a rung's workers checkpointed activations."""
    import ray

    calls = tmp_path_factory.mktemp("checkpoint_calls")

    def count_checkpoint_calls():  # runs in every worker process of this cluster
        import torch.utils.checkpoint as tuc

        original = tuc.checkpoint

        def counted(*args, **kwargs):
            with open(calls / str(os.getpid()), "a") as f:
                f.write("1\n")
            return original(*args, **kwargs)

        tuc.checkpoint = counted

    if ray.is_initialized():  # not so in file order (conftest's cluster starts later); it needs its hook
        ray.shutdown()
    env_vars = {"PYTHONWARNINGS": "ignore", "RAY_TRAIN_V2_ENABLED": "1"}
    init_local_ray(4, {"env_vars": env_vars, "worker_process_setup_hook": count_checkpoint_calls})
    yield calls
    ray.shutdown()


def train(root: Path, pretraining: str = "") -> Path:
    """Train the reference's rung, with `pretraining` lines added to the spec's section, through
    `fit_rung` (test_pretrain.fit: what a sweep runs for each rung, less MLflow); its run dir."""
    return fit(
        root,
        MUP_SPEC.replace("  cpu_workers: 2\n", "  cpu_workers: 2\n" + textwrap.indent(pretraining, "  ")),
    )


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == list(range(1, STEPS + 1))
    return [rec["train/loss"] for rec in lines]


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def checkpoint_calls(calls: Path, run_dir: Path) -> list[int]:
    """`torch.utils.checkpoint.checkpoint` calls made by each rank's worker process."""
    pids = [json.loads((RungPaths(run_dir).worker(r)).read_text())["pid"] for r in (0, 1)]
    return [
        len((calls / str(pid)).read_text().splitlines()) if (calls / str(pid)).exists() else 0 for pid in pids
    ]


def local_elements(run_dir: Path) -> list[float]:
    """Each rank's share of the model's parameter elements."""
    recs = [json.loads((RungPaths(run_dir).worker(r)).read_text()) for r in (0, 1)]
    return [rec["local_param_elements"] / rec["total_param_elements"] for rec in recs]


def export_vs_probe(run_dir: Path) -> float:
    """Max abs difference between the export's fp32 features and the engine's, for the probe clip."""
    final = RungPaths(run_dir).checkpoint(STEPS)
    assert ckpt.verify(final) is None  # sealed: every file matches the manifest
    encoder, _ = load_encoder(final)
    probe = load_file(str(final / "export" / "probe.safetensors"))
    with torch.no_grad():
        mine = encoder(normalize_video(probe["video"]), torch.arange(encoder.cfg.num_tokens)[None])
    assert mine.dtype == torch.float32 and mine.shape == probe["features"].shape
    return (mine - probe["features"]).abs().max().item()


# The reference is fp32, ZeRO-3, no activation checkpointing; bf16 changes the precision, and
# act_ckpt_zero2 the other two: each of those leaves fp32's arithmetic (and so the losses) alone,
# so one rung checks both, each against the reference.
VARIANTS = {
    "bf16": "precision: bf16\n",
    "act_ckpt_zero2": "precision: fp32\nzero_stage: 2\nactivation_checkpointing: true\n",
}


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """`runs(name)`: the variant's run dir; the reference and each variant are trained once for the
    module, two at a time (the module's cluster has 4 CPUs: two 2-worker rungs)."""
    roots = {name: tmp_path_factory.mktemp(name) for name in VARIANTS}
    with ThreadPoolExecutor(2) as pool:
        reference = pool.submit(reference_fit, tmp_path_factory, cluster)
        futures = {name: pool.submit(train, roots[name], VARIANTS[name]) for name in VARIANTS}
        trained = {name: f.result() for name, f in futures.items()}
        ref_root, trained["reference"] = reference.result()
    rung = load_spec(ref_root / "spec.yaml").rung("tiny")
    assert (rung.precision, rung.zero_stage, rung.activation_checkpointing) == ("fp32", 3, False)
    assert rung.steps == STEPS and rung.model.mup is not None
    return trained.__getitem__


def test_reference_trains_and_exports_exactly(runs, cluster):
    ref = runs("reference")
    loss = losses(ref)
    assert loss[-1] < 0.8 * loss[0]
    assert export_vs_probe(ref) < 1e-5  # fp32 engine, fp32 export: the same numbers
    assert checkpoint_calls(cluster, ref) == [0, 0]


def test_bf16_on_cpu_trains_close_to_fp32_and_exports(runs):
    ref, bf16 = runs("reference"), runs("bf16")
    loss = losses(bf16)
    assert all(torch.isfinite(torch.tensor(loss)))
    assert loss[-1] < 0.8 * loss[0]
    # Same seed, data and initial weights (drawn in fp32, then rounded: models.mae.fp32_draws);
    # only the arithmetic differs. Measured: at most 0.19% apart over the 12 steps (0.13% at
    # step 1, the forward alone); bf16's unit roundoff is 2^-8 = 0.4%. With weights drawn in
    # bf16 (before fp32_draws) the runs of an 8-step rung (not μP) started 3.4% apart and
    # reached 4.9%: 1% catches that.
    gap = max_rel_diff(loss, losses(ref))
    assert gap < 1e-2, f"bf16 vs fp32 losses differ by {gap:.2%}"
    # The export holds the fp32 master weights, consolidated from the sealed checkpoint; the
    # probe is the bf16 engine's forward of those weights rounded to bf16. Features reach ~3 in
    # size: measured 0.023 apart (a few bf16 roundings of 3 x 2^-8). Not 0: the engine did
    # compute in bf16 (the fp32 reference matches its export exactly).
    diff = export_vs_probe(bf16)
    assert 1e-4 < diff < 0.05, f"bf16 engine vs fp32 export features differ by {diff}"


def test_activation_checkpointing_engages_and_changes_no_loss(runs, cluster):
    ref, ac = runs("reference"), runs("act_ckpt_zero2")
    # Each rank checkpoints each of the encoder's 2 blocks in every training forward: 12 steps x
    # 2 micro-batches x 2 blocks; the eval-mode forwards (the held-out loss at each checkpoint,
    # the probe at the final save) do not.
    assert checkpoint_calls(cluster, ac) == [STEPS * 2 * 2] * 2
    # Recomputing a block in backward repeats the same fp32 ops on the same inputs: measured
    # bitwise equal (with ZeRO-3, 8 steps); 1e-5 relative leaves room for a kernel that picks
    # another reduction order. This rung, with ZeRO-2 too, measured 1.2e-7 relative at most.
    # (This rung also runs ZeRO-2, which changes no loss either: test_zero2_matches_zero3.)
    diff = max_rel_diff(losses(ac), losses(ref))
    assert diff < 1e-5, f"activation checkpointing changed the losses by {diff:.2e} (relative)"


def test_zero2_matches_zero3(runs):
    ref, z2 = runs("reference"), runs("act_ckpt_zero2")
    # ZeRO-2 keeps whole parameters on every rank; ZeRO-3 about half of them.
    assert local_elements(z2) == [1.0, 1.0]
    assert all(0.4 <= share <= 0.6 for share in local_elements(ref))
    # The same fp32 arithmetic, partitioned and reduced differently: measured 1.2e-7 relative at
    # most over these 12 steps (bitwise equal over 8 steps of a rung without μP; fp32's unit
    # roundoff is 6e-8), so 1e-5 relative is fp32 agreement with margin. (This rung also checkpoints
    # activations, which repeats the same fp32 ops: test_activation_checkpointing_...)
    diff = max_rel_diff(losses(z2), losses(ref))
    assert diff < 1e-5, f"ZeRO-2 vs ZeRO-3 losses differ by {diff:.2e} (relative)"
    assert export_vs_probe(z2) < 1e-5  # the stage-2 checkpoint consolidates to the same export
