"""One module per paper registering its tables (:class:`~replicate.experiments.spec.TableSpec`), and the
recipes several papers share."""

from ...profiles import schedule_for


def at_profile_1x(coco: dict) -> dict:
    """Profile overrides of a test-dev comparison table: its recipe on coco; on smoke (a plumbing check, so that
    the book's CI build stays short) and on the proxy, the profile's own 1x schedule. Every row of such a table
    shares the schedule, so its claims (orderings at one schedule) are compared at equal schedule either way,
    and a longer proxy schedule would multiply the cost of tables whose claims are not about the schedule."""
    return {"coco": coco, **{p: {"iters": schedule_for(p).iters, "steps": schedule_for(p).steps}
                             for p in ("smoke", "proxy")}}


MS_2X = at_profile_1x({"scale": "ms-480-960"})  # MOD Table 7, SALT-Net Table 5 (rows at "2x")
JITTER_1_5X = at_profile_1x({"scale": "ms-640-800"})  # AlignDet Table 7 (rows at "1.5x"): RetinaNet's test-dev recipe
