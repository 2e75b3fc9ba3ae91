"""Models: the shared backbone, the ORPPT fusion head, the CFDP detection head, and
E2E-MFD tying them together."""

from e2emfd.models.backbone import SharedBackbone
from e2emfd.models.e2emfd import E2EMFD, build_model
from e2emfd.models.orppt import ORPPTHead

__all__ = ["E2EMFD", "ORPPTHead", "SharedBackbone", "build_model"]
