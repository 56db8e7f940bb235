"""vlmlens.viz."""
