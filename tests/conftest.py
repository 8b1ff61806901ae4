"""Shared fixtures. `ray_cluster`: one local Ray cluster for the whole test session (started on first use).

It has 2 CPUs and one *logical* GPU (Ray bookkeeping only; trials still run on the CPU), so the packing
test can see four 0.25-GPU trials share "the card". Tests that run a driver as a subprocess (the SIGKILL
resume test) do not use it: their driver starts its own local cluster (RAY_ADDRESS is removed from the
child's environment), so killing it cannot take this one down.
"""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")  # Ray's W&B callback checks the env var (ray-notes section 3)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """One torch thread: tiny tensors gain nothing from threads on a shared 2-core machine, and bitwise
    comparisons need the same reduction order in every run."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
