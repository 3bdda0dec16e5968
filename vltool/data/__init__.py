"""Datasets: file formats, tokenisation with label masks, images, batching, checks, the demo task."""
