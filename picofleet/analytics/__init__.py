"""analytics area of the hub: rollups, alerts and retention (see picofleet/areas.py).

rollups    rollup_hourly (device, series, UTC hour) and rollup_daily (device, UTC day),
           recomputed from processed_record: refresh() past a watermark, backfill() a window
alerts     evaluate() opens/closes alert rows; publish_pending() announces them on
           {prefix}/alerts/{kind}
retention  prune() drops raw records and facts older than N days once rolled up
Job        the hub's periodic cycle of all three (service.attach)
"""

from . import _queries as queries
from ._alerts import AlertChanges, AlertKind, evaluate, publish_pending
from ._job import CycleResult, Job
from ._models import AlertOut, DailyStat, EtlStatus, HourlyStat
from ._retention import PruneResult, prune
from ._rollup import RefreshResult, backfill, refresh
from ._settings import AnalyticsSettings

__all__ = [
    "AlertChanges",
    "AlertKind",
    "AlertOut",
    "AnalyticsSettings",
    "CycleResult",
    "DailyStat",
    "EtlStatus",
    "HourlyStat",
    "Job",
    "PruneResult",
    "RefreshResult",
    "backfill",
    "evaluate",
    "prune",
    "publish_pending",
    "queries",
    "refresh",
]
