"""HR image sources, validation, and the DALI / PIL pipelines that make (LR, HR) batches."""
