"""vlmlens.data."""
