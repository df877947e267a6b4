"""Detector building blocks: backbones, necks, heads, box coders, assigners, losses, post-processing."""
