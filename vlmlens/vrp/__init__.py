"""vlmlens.vrp."""
