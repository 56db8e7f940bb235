"""vlmlens.adapters."""
