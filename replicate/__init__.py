"""Reference replication of the classification/localization misalignment literature.

Layers (each a subpackage): ``data`` (synthetic benchmark, COCO reading, transforms),
``evaluation`` (COCO metrics), ``book`` (notebook execution and the Jupyter Book build).
"""

__version__ = "0.1.0"
