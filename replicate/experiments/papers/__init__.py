"""One module per paper registering its tables (:class:`~replicate.experiments.spec.TableSpec`)."""
