"""e2emfd: end-to-end infrared-visible image fusion and object detection (E2E-MFD)."""

__version__ = "0.1.0"
