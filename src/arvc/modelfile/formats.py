"""The format tags arvc writes into its own files and checks when it reads them back.

Written once here so the writer (the training engine, the exporter) and the reader (`modelfile.read`)
cannot drift apart.
"""

CHECKPOINT_FORMAT = "arvc-checkpoint"  # the "format" entry of a training checkpoint (ckpt_*.pt)
EXPORT_FORMAT = "arvc-generator"  # model.safetensors metadata and model.json "format" of an export

__all__ = ["CHECKPOINT_FORMAT", "EXPORT_FORMAT"]
