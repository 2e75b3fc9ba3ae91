"""Fixed-shape inference replayed from one CUDA graph.

At batch 1 the eager forward pass is bound by the host: it launches some 1,500 small
kernels and the GPU idles between them (see benchmarks/RESULTS.md). The network up to
NMS has fixed shapes and no host synchronisation (the RoI pooler and the DDIM loop are
written for that), so it can be captured once and replayed with one launch. NMS, whose
output size depends on the data, runs eagerly on the captured candidates.

    runner = GraphedInference(model, batch_size=1, height=768, width=1024)
    out = runner(vis, ir)        # same keys as model(batch) in eval mode

A runner serves one input size and batch size; build one per size (each holds its own
copy of the activations). Images of another size are an error, not a silent re-capture.
With ``graph=False``, and always on CPU (which has no graphs), the runner runs the same
forward eagerly on every call: one backbone pass for both heads, as ``model(batch)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from e2emfd.models.detection import DetectionHead
from e2emfd.models.e2emfd import E2EMFD


class GraphedInference:
    """Inference of ``model`` on (batch_size, 3|1, height, width) CUDA tensors in [0, 1].

    Args:
        model: an E2E-MFD model (on CUDA for a graph); it is put in eval mode.
        batch_size, height, width: the input shape this runner serves; the images are
            zero-padded to multiples of 32 inside (as ``model.fuse``/``model.detect`` do).
        fusion / detection: which heads to run (both by default, where the model has them):
            ``fusion=False`` is detection-only inference, ``detection=False`` fusion-only.
        bf16: run under bf16 autocast (as training and evaluation do on CUDA).
        num_proposals / sampling_steps: inference settings of the detection head (default:
            the model's config); fixed once captured.
        warmup: eager passes on a side stream before capture (cuDNN picks its algorithms,
            lazy initialisations happen, ``torch.compile``d parts compile).
        graph: capture a CUDA graph (on CUDA); False runs eagerly.
    """

    def __init__(
        self,
        model: E2EMFD,
        batch_size: int,
        height: int,
        width: int,
        *,
        fusion: bool = True,
        detection: bool = True,
        bf16: bool = True,
        num_proposals: int | None = None,
        sampling_steps: int | None = None,
        warmup: int = 3,
        graph: bool = True,
    ) -> None:
        device = next(model.parameters()).device
        self.fusion = fusion and model.fusion is not None
        self.detection = detection and model.detector is not None
        if not (self.fusion or self.detection):
            raise ValueError("nothing to run: the model has neither of the requested heads")
        self.model = model.eval()
        self.tasks = tuple(
            task
            for task, wanted in (("detection", self.detection), ("fusion", self.fusion))
            if wanted
        )
        self.bf16 = bf16 and device.type == "cuda"
        self.shape = (batch_size, height, width)
        divisor = model.size_divisor
        padded = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
        # static inputs: the graph reads these addresses; __call__ copies new images in
        self._vis = torch.zeros(batch_size, 3, *padded, device=device)
        self._ir = torch.zeros(batch_size, 1, *padded, device=device)
        self._sizes = torch.tensor([[height, width]] * batch_size, device=device)
        self._outputs: dict = {}
        self._noise = None
        if self.detection:
            head: DetectionHead = model.detector
            self.num_proposals = head.cfg.inference_proposals(num_proposals)
            self.sampling_steps = sampling_steps or head.cfg.sampling_steps
            self._noise = head.draw_noise(
                batch_size, self.num_proposals, self.sampling_steps, device
            ).zero_()

        self.graph: torch.cuda.CUDAGraph | None = None
        if device.type != "cuda" or not graph:
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._forward()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._outputs = self._forward()

    def _forward(self) -> dict:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16)
        with torch.no_grad(), autocast:
            return self.model.infer(self._vis, self._ir, self._sizes, self._noise, tasks=self.tasks)

    def __call__(self, vis: Tensor, ir: Tensor, noise: Tensor | None = None) -> dict:
        """vis (B, 3, H, W) and ir (B, 1, H, W) in [0, 1] on the model's device, at the
        runner's shape.

        ``noise``: every random draw of the DDIM loop, (2 * steps - 1, B, N, dim) (see
        the head's ``draw_noise``); default fresh Gaussian noise from the global generator,
        drawn as the eager head draws it, so the same seed gives the same detections.

        Returns ``{"fused", "fused_rgb", "detections"}`` like the eager model (a head that
        was not run gives None), in the unpadded frame; the tensors are the caller's own.
        """
        b, h, w = self.shape
        if vis.shape[0] != b or vis.shape[-2:] != (h, w) or ir.shape[-2:] != (h, w):
            raise ValueError(
                f"this CUDA-graph runner serves batches of {b} images of {h}x{w}, got "
                f"visible {tuple(vis.shape)} and infrared {tuple(ir.shape)}; build a runner "
                "for that shape"
            )
        self._vis[..., :h, :w].copy_(vis)
        self._ir[..., :h, :w].copy_(ir)
        if self.detection:
            if noise is None:
                self._noise.normal_()
            else:
                self._noise.copy_(noise)
        if self.graph is None:
            self._outputs = self._forward()
        else:
            self.graph.replay()
        out = self.model.finish(self._outputs)
        for key in ("fused", "fused_rgb"):
            if out[key] is not None:  # the caller's own copy, in the unpadded frame
                out[key] = out[key][..., :h, :w].clone()
        return out
