"""User-facing errors.

Anything a user can cause (a bad file, a wrong path, a malformed detection list) raises a
:class:`ReplicateError` whose message names the file and the problem. The CLI prints these as one
line and exits with status 2; programming errors keep their traceback.
"""

from __future__ import annotations


class ReplicateError(Exception):
    """An error caused by user input; the message is meant to be read by the user."""


class DataError(ReplicateError):
    """A dataset or annotation file is missing, unreadable or inconsistent."""


class EvaluationError(ReplicateError):
    """Ground truth or detections cannot be evaluated as given."""


class SummaryUnavailable(ReplicateError):
    """An analysis of a finished run is neither cached nor computable here: the run's checkpoint is gone."""
