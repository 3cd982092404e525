"""Real video through the whole pretraining path: Ray Train ranks decoding in DataLoader workers."""

import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_pretrain import SPEC, losses
from test_readers import write_video

from contracts.layout import RungPaths
from contracts.spec import load_spec
from orchestrator.pretrain import fit_rung

pytestmark = pytest.mark.slow


def test_decode_workers_leave_the_losses_of_a_rung_bitwise_unchanged(ray_cluster, tmp_path):
    for k in range(5):
        write_video(tmp_path / "videos" / f"v{k}.mp4", shift=5 * k)

    def fit(workers: int):
        """Train the rung with `workers` decoders per rank through `fit_rung` (what a sweep runs for
        each rung, less MLflow). -> its outcome and run dir."""
        root = tmp_path / f"workers{workers}"
        root.mkdir()
        text = SPEC.replace(
            "data: {", f"data: {{source: video_folder, path: '{tmp_path / 'videos'}', workers: {workers}, "
        )
        (root / "spec.yaml").write_text(textwrap.dedent(text))
        rung = load_spec(root / "spec.yaml").rungs()[0]
        return fit_rung(rung, root / "runs"), RungPaths.for_rung(rung, root / "runs").root

    # Both at once (the cluster's 4 CPUs hold two 2-worker rungs): in-rank decoding, and 2 ranks
    # each forking 2 decoders.
    with ThreadPoolExecutor(2) as pool:
        (out0, in_rank), (out2, in_workers) = pool.map(fit, (0, 2))
    assert out0.ok and out2.ok and out0.step == out2.step == 12, (out0, out2)
    assert in_rank.name == in_workers.name  # data.workers is not part of the rung's identity
    assert len(losses(in_rank)) == 12 and losses(in_rank) == losses(in_workers)
