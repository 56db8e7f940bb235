"""vlmlens.ops."""
