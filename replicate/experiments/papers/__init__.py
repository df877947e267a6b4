"""One module per paper registering its tables (:class:`~replicate.experiments.spec.TableSpec`), and the
recipes several papers share."""

from ...profiles import PROXY_SCHEDULE

# The test-dev comparison tables' recipe (MOD Table 7, SALT-Net Table 5): on coco the released configs'
# multi-scale training at 2x; on smoke (a plumbing check) the 1x smoke schedule, so that the book's CI build
# stays short; on the proxy its 1x (4800 iterations). Every row of such a table shares the schedule, so its
# claims (orderings at one schedule) are compared at equal schedule either way, and the proxy's 2x would
# double the cost of tables whose claims are not about the schedule.
MS_2X = {"coco": {"scale": "ms-480-960"}, "smoke": {"iters": 50, "steps": (45,)},
         "proxy": {"iters": PROXY_SCHEDULE.iters, "steps": PROXY_SCHEDULE.steps}}
