"""Nothing is lost: a run killed with SIGKILL and resumed ends where an uninterrupted run
ends, and two processes with DDP (gloo) train exactly like one process on the same global
batch, GMTA included."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.engine import checkpoint as ckpt

BIN = Path(sys.executable).parent


def _args(root, out, *extra):
    return [f"data.root={root}", f"output_dir={out}", *TINY_JOINT, *extra]


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _run(cmd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def _weights(out: Path) -> dict:
    state = ckpt.load_checkpoint(out / "checkpoint_last.pt")
    return state["model"], state["step"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(synth_small, tmp_path):
    common = [
        "train.max_iters=12",
        "train.checkpoint_every=3",
        "train.mtl=gmta",
        "train.gmta_every=2",
    ]
    cli = [str(BIN / "e2emfd"), "train", "--no-progress", *_config_arg(tmp_path)]
    reference = tmp_path / "reference"
    done = _run([*cli, *_args(synth_small, reference, *common)])
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cli, *_args(synth_small, killed, *common)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        path = killed / "checkpoint_last.pt"
        if path.is_file():
            step = ckpt.load_checkpoint(path)["step"]
            if step >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= _weights(killed)[1] < 12

    resumed = _run([*cli, "--resume", *_args(synth_small, killed, *common)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (ref, ref_step), (got, got_step) = _weights(reference), _weights(killed)
    assert ref_step == got_step == 12
    # the resumed run's log holds each step once, and no checkpoint temp file is left
    assert _logged_steps(killed) == _logged_steps(reference) == list(range(1, 13))
    assert not list(killed.glob(".*.tmp-*"))
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(synth_small, tmp_path):
    common = [
        "train.max_iters=3",
        "train.mtl=gmta",
        "train.gmta_every=2",  # steps 0 and 2 balance, step 1 is a plain DDP step
        "model.backbone.frozen_bn=true",  # batch statistics would differ per process
        "model.fusion.norm=gn",
        "train.clip_grad=0",
        # Three steps of this tiny model can amplify float rounding chaotically: at seed 0
        # the weights after the first (GMTA) step, 1e-8 apart between two summation orders
        # of the same RoIAlign gradient, gave gradient norms 1e-4 apart one step later
        # (same matching; the second stage's RoI features were already 1e-5 apart). At seeds
        # 1-3 either order stays within 2e-6, so this seed tests DDP, not that knife edge.
        "seed=1",
    ]
    single = tmp_path / "single"
    one = _run(
        [
            str(BIN / "e2emfd"),
            "train",
            "--no-progress",
            *_config_arg(tmp_path),
            *_args(synth_small, single, *common, "train.batch_size=4"),
        ]
    )
    assert one.returncode == 0, one.stderr[-2000:]
    ddp = tmp_path / "ddp"
    two = _run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node=2",
            "--master_port=29533",
            "-m",
            "e2emfd",
            "train",
            "--no-progress",
            *_config_arg(tmp_path),
            *_args(synth_small, ddp, *common, "train.batch_size=2"),
        ]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # The global batch's losses and gradient norms (GMTA-aligned on steps 0 and 2) agree
    # to float rounding ...
    logs = [
        [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        for out in (single, ddp)
    ]
    for one_step, ddp_step in zip(*logs):
        for key in ("loss_detection", "loss_fusion", "grad_norm", "mtl/norm_ratio"):
            if key in one_step:
                expected = pytest.approx(one_step[key], rel=1e-4)
                assert ddp_step[key] == expected, (key, one_step["step"])
        if "mtl/cos" in one_step:  # a small cosine: compare absolutely
            assert ddp_step["mtl/cos"] == pytest.approx(one_step["mtl/cos"], abs=1e-4)
    assert sum("mtl/cos" in r for r in logs[0]) == 2
    # ... and so do the weights: AdamW turns rounding in near-zero gradient entries into
    # differences of a fraction of one step (lr = 1e-3), so compare at that scale.
    (a, _), (b, _) = _weights(single), _weights(ddp)
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("self_attn.in_proj_bias"):
            # The key projection's bias cancels in the softmax: its gradient is exactly zero
            # up to rounding, which Adam normalises into full-size noise steps. Skip it.
            third = x.numel() // 3
            x, y = torch.cat([x[:third], x[2 * third :]]), torch.cat([y[:third], y[2 * third :]])
        torch.testing.assert_close(x, y, rtol=0, atol=2e-4, msg=key)


def _config_arg(tmp_path: Path) -> list[str]:
    """An empty YAML config: everything comes from the overrides."""
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return [str(path)]
