"""Tensor operations that torchvision does not provide: rotated boxes (le90)."""

from e2emfd.ops.rotated import (
    MultiLevelRotatedRoIAlign,
    assign_rotated_levels,
    hflip_obb,
    min_area_rect,
    multilevel_rotated_roi_align,
    normalize_le90,
    obb_to_hbb,
    obb_to_poly,
    paired_rotated_box_iou,
    poly_to_obb,
    rotated_batched_nms,
    rotated_box_iou,
    rotated_nms,
    rotated_roi_align,
    scale_obb,
)

__all__ = [
    "MultiLevelRotatedRoIAlign",
    "assign_rotated_levels",
    "hflip_obb",
    "min_area_rect",
    "multilevel_rotated_roi_align",
    "normalize_le90",
    "obb_to_hbb",
    "obb_to_poly",
    "paired_rotated_box_iou",
    "poly_to_obb",
    "rotated_batched_nms",
    "rotated_box_iou",
    "rotated_nms",
    "rotated_roi_align",
    "scale_obb",
]
