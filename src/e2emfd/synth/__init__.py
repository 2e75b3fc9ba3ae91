"""Synthetic infrared-visible scenes with labels, rendered with their thermal physics:
street scenes with axis-aligned boxes in the M3FD layout (:mod:`.street`) and top-down
drone scenes with rotated boxes in the DroneVehicle layout (:mod:`.aerial`)."""

from e2emfd.synth.aerial import generate_aerial_dataset
from e2emfd.synth.street import generate_dataset

__all__ = ["generate_aerial_dataset", "generate_dataset"]
