"""vlmlens: mechanistic interpretability for vision-language models."""
