"""The torch engine of the fusion metrics: batched, float64, CPU or GPU, one module per
convention (:mod:`.python`, :mod:`.matlab`) on shared building blocks (:mod:`.core`,
:mod:`.windowed`)."""
