"""Turn training checkpoints into model directories (``pth_to_hf``) and merge adapters (``merge``)."""
