"""Datasets: the synthetic misalignment benchmark, COCO-format reading, transforms and batching."""
