"""What a checkpoint is: known models, original folders, families, tokenizer, placement, loading, demo models."""
