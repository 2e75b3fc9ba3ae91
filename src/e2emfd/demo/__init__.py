"""The demo (synthetic scenes -> joint training -> report) and the modality experiment."""
