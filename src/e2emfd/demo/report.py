"""The demo's self-contained HTML report: scene grids, training curves, result tables.

Every image is a PNG file next to ``report.html`` referenced by a relative path, so the
report opens offline in any browser and the figures can be reused on their own.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from e2emfd.data import write_png
from e2emfd.viz import draw_boxes, hstack_with_gap

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; image-rendering: auto; }
.note { color: #555; font-size: 0.92em; }
"""


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(train_log: Path, out_dir: Path) -> list[tuple[Path, str]]:
    """PNG plots of both task losses and of the GMTA statistics over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_jsonl(train_log) if not r.get("skipped")]
    figures: list[tuple[Path, str]] = []
    if not records:
        return figures
    out_dir.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, task in zip(axes, ("detection", "fusion")):
        rows = [r for r in records if f"loss_{task}" in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[f"loss_{task}"] for r in rows], lw=1)
        ax.set_title(f"{task} loss")
    path = _save_figure(fig, axes, out_dir / "losses.png")
    figures.append((path, "Training losses of both tasks (sum of the weighted terms)."))

    stats = [r for r in records if "mtl/cos" in r]
    if stats:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        steps = [r["step"] for r in stats]
        axes[0].plot(steps, [r["mtl/cos"] for r in stats], ".", ms=3)
        axes[0].axhline(0, color="k", lw=0.5)
        axes[0].set_title("cosine(g_det, g_fus)")
        axes[1].semilogy(steps, [r["mtl/norm_ratio"] for r in stats], ".", ms=3)
        axes[1].set_title("|g_det| / |g_fus|")
        axes[2].semilogy(steps, [r["mtl/cond_before"] for r in stats], ".", ms=3, label="before")
        if "mtl/cond_after" in stats[0]:
            axes[2].semilogy(
                steps, [r["mtl/cond_after"] for r in stats], ".", ms=3, label="after GMTA"
            )
        axes[2].set_title("condition number of [g_det; g_fus]")
        axes[2].legend()
        path = _save_figure(fig, axes, out_dir / "gmta.png")
        figures.append(
            (
                path,
                "Gradient statistics at every balancing step: the task gradients on the shared "
                "backbone conflict (cosine near or below 0) and differ in scale by orders of "
                "magnitude; GMTA aligns them to condition number 1.",
            )
        )
    return figures


def _save_figure(fig, axes, path: Path) -> Path:
    """Label the step axes, grid them, write the figure as PNG and close it."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scene_panels(
    sample: dict,
    fused_rgb: torch.Tensor | None,
    detections: dict | None,
    class_names: list[str],
    score_threshold: float = 0.3,
) -> np.ndarray:
    """visible | infrared | fused with detections | ground truth (on the visible image)."""
    h, w = sample["vis"].shape[-2:]
    vis = sample["vis"].permute(1, 2, 0).numpy()
    ir = sample["ir"][0].numpy()
    panels = [vis, ir]
    if fused_rgb is not None:
        fused = fused_rgb[:, :h, :w].permute(1, 2, 0).numpy()
    else:
        fused = vis
    if detections is not None:
        keep = detections["scores"] >= score_threshold
        fused = draw_boxes(
            fused,
            detections["boxes"][keep].numpy(),
            detections["labels"][keep].numpy(),
            class_names,
            detections["scores"][keep].numpy(),
        )
    panels.append(fused)
    panels.append(draw_boxes(vis, sample["boxes"].numpy(), sample["labels"].numpy(), class_names))
    return hstack_with_gap(panels)


def write_scene_grid(
    model, dataset, indices: list[int], out_dir: Path, class_names: list[str]
) -> list[Path]:
    """One PNG per scene (4 panels) for the dataset items ``indices``."""
    from e2emfd.data import collate_pairs

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    model.eval()
    for index in indices:
        sample = dataset[index]
        batch = collate_pairs([sample])
        with torch.no_grad():
            out = model(batch)
        dets = out["detections"][0] if out["detections"] is not None else None
        fused = out["fused_rgb"][0] if out["fused_rgb"] is not None else None
        image = scene_panels(sample, fused, dets, class_names)
        path = out_dir / f"scene_{sample['image_id']}.png"
        write_png(path, image)
        paths.append(path)
    return paths


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if np.isfinite(v) else "–"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def detection_table(det: dict) -> str:
    header = ["metric", "value"]
    rows = [[k, det[k]] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl") if k in det]
    per_class = _table(
        ["class", "AP50", "AP50:95"],
        [
            [c, det["per_class_AP50"][c], det["per_class"].get(c, float("nan"))]
            for c in det["per_class_AP50"]
        ],
    )
    return _table(header, rows) + per_class


def fusion_table(rows_by_method: dict[str, dict[str, float]]) -> str:
    methods = list(rows_by_method)
    metrics = list(next(iter(rows_by_method.values())))
    return _table(
        ["method", *metrics], [[m, *[rows_by_method[m][k] for k in metrics]] for m in methods]
    )


def write_html(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    body = "".join(f"<h2>{html.escape(name)}</h2>\n{content}\n" for name, content in sections)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n"
    )
    path.write_text(page)
    return path


def figure(path: Path, root: Path, caption: str) -> str:
    rel = html.escape(path.relative_to(root).as_posix())
    text = html.escape(caption)
    return f"<figure><img src='{rel}' alt='{text}'><figcaption>{text}</figcaption></figure>"
