"""Analyses of trained detectors: the classification/localization misalignment statistics of RetinaNet-Conf."""
