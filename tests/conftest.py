from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


# The longest test files, longest first. `--dist loadfile` hands files to its two workers
# in collection order (with --no-loadscope-reorder, as `make test` runs it; by default it
# sorts files by their number of tests, which put the one-test overfit files last, one after
# the other on one worker while the other idled), and queues a next file behind a worker's
# last few tests. Collected first, the long files run side by side.
LONGEST_FIRST = (
    "test_detection_overfit_rotated.py",
    "test_detection_overfit.py",
    "test_export_onnx.py",
    "test_weights_msrs.py",
    "test_demo.py",
    "test_benchmarks.py",
    "test_engine_slow.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


def pytest_configure(config):
    # Under pytest-xdist each worker is its own process: one intra-op thread per worker
    # keeps 2 workers on 2 cores from thrashing.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """20 synthetic pairs at 128x96 (16 train, 4 test) in the M3FD layout."""
    from e2emfd.synth.street import generate_dataset

    root = tmp_path_factory.mktemp("synth_small")
    generate_dataset(root, num=20, size=(128, 96), seed=11, test_fraction=0.2, progress=False)
    return root


TINY_JOINT = [
    "model.backbone.depth=18",
    "model.backbone.width=8",
    "model.backbone.out_channels=32",
    "model.backbone.frozen_bn=false",
    "model.backbone.freeze_at=0",
    "model.fusion.pixel_channels=4",
    "model.fusion.hidden=16",
    "model.detection.hidden=32",
    "model.detection.num_stages=2",
    "model.detection.num_proposals=20",
    "model.detection.num_heads=2",
    "model.detection.dim_dynamic=8",
    "model.detection.dim_feedforward=64",
    "train.batch_size=2",
    "train.lr=0.001",
    "train.warmup_iters=2",
    "train.schedule=constant",
    "train.eval_every=-1",
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.gmta_every=1",
]


@pytest.fixture(scope="session")
def tiny_joint_run(synth_small, tmp_path_factory) -> Path:
    """A run folder of the tiny joint model trained 2 steps on ``synth_small`` (checkpoint
    at step 2), shared by the tests that need a trained model; copy it before changing it."""
    from e2emfd.config import load_config
    from e2emfd.engine.trainer import train

    out = tmp_path_factory.mktemp("tiny_joint_run")
    cfg = load_config(
        None, TINY_JOINT + [f"data.root={synth_small}", f"output_dir={out}", "train.max_iters=2"]
    )
    train(cfg, progress=False)
    return out
