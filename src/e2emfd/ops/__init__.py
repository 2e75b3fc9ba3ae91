"""Tensor operations that torchvision does not provide: rotated boxes (le90)."""

from e2emfd.ops.rotated import (
    clip_convex_polygons,
    hflip_obb,
    min_area_rect,
    normalize_le90,
    obb_to_hbb,
    obb_to_poly,
    paired_rotated_box_iou,
    paired_rotated_giou,
    poly_to_obb,
    polygon_area,
    rotated_batched_nms,
    rotated_box_iou,
    rotated_box_mask,
    rotated_nms,
    rotated_roi_align,
    scale_obb,
)

__all__ = [
    "clip_convex_polygons",
    "hflip_obb",
    "min_area_rect",
    "normalize_le90",
    "obb_to_hbb",
    "obb_to_poly",
    "paired_rotated_box_iou",
    "paired_rotated_giou",
    "poly_to_obb",
    "polygon_area",
    "rotated_batched_nms",
    "rotated_box_iou",
    "rotated_box_mask",
    "rotated_nms",
    "rotated_roi_align",
    "scale_obb",
]
