"""Executing notebooks and building the Jupyter Book."""
