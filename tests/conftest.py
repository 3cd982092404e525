import logging
import os

import pytest

os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the integration tests of a session."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
