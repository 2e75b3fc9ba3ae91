"""Local multi-process training without torchrun: the launcher the demo uses on a CPU."""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from e2emfd.engine.distributed import any_rank, run_local_processes
from e2emfd.engine.local import local_processes


def _report(out: str) -> None:
    rank = dist.get_rank()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    record = {
        "rank": rank,
        "world": dist.get_world_size(),
        "threads": torch.get_num_threads(),
        "sum": total.item(),
        "any_rank_1": any_rank(rank == 1),
        "any_none": any_rank(False),
    }
    Path(out, f"{rank}.json").write_text(json.dumps(record))


def _init_and_report(out: str) -> None:
    dist.init_process_group("gloo")
    try:
        _report(out)
    finally:
        dist.destroy_process_group()


def test_processes_form_one_group_and_agree_on_a_stop(tmp_path):
    run_local_processes(_init_and_report, 2, (str(tmp_path),), threads=1)
    records = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for r, rec in enumerate(records):
        assert rec["rank"] == r and rec["world"] == 2 and rec["threads"] == 1
        assert rec["sum"] == 3.0  # 1 + 2: both ranks took part
        assert rec["any_rank_1"] is True  # rank 0 learns that rank 1 wants to stop
        assert rec["any_none"] is False


def test_any_rank_in_one_process_is_the_flag():
    assert any_rank(True) is True and any_rank(False) is False


def test_demo_uses_two_processes_on_two_cores_and_one_on_one():
    assert local_processes(4, cpus=2) == 2
    assert local_processes(4, cpus=16) == 2
    assert local_processes(4, cpus=1) == 1
    assert local_processes(3, cpus=2) == 1  # an odd batch cannot be halved
    assert os.environ.get("RANK") is None  # the launcher leaves the parent untouched
