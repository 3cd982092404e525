"""Real video through the whole pretraining path: Ray Train ranks decoding in DataLoader workers."""

import pytest
from test_pretrain import SPEC, losses, train
from test_readers import write_video

pytestmark = pytest.mark.slow


def test_decode_workers_leave_the_losses_of_a_rung_bitwise_unchanged(ray_cluster, tmp_path):
    for k in range(5):
        write_video(tmp_path / "videos" / f"v{k}.mp4", shift=5 * k)

    def spec(workers):
        return SPEC.replace(
            "data: {", f"data: {{source: video_folder, path: '{tmp_path / 'videos'}', workers: {workers}, "
        )

    code0, in_rank = train(tmp_path / "thread", spec(0))
    code2, in_workers = train(tmp_path / "workers", spec(2))  # 2 ranks, each forking 2 decoders
    assert code0 == code2 == 0
    assert in_rank.name == in_workers.name  # data.workers is not part of the rung's identity
    assert len(losses(in_rank)) == 12 and losses(in_rank) == losses(in_workers)
