"""vlmlens.zoo."""
