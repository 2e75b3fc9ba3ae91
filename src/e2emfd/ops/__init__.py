"""Tensor operations that torchvision does not provide: rotated boxes (le90) in
:mod:`e2emfd.ops.rotated` (geometry, polygon IoU), :mod:`e2emfd.ops.rotated_nms` and
:mod:`e2emfd.ops.rotated_roi_align`; axis-aligned RoIAlign with a fast CPU backward in
:mod:`e2emfd.ops.roi_align`."""
