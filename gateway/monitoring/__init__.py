"""Monitoring of served artifact versions: per-window figures, feedback and drift.

`gateway.config` imports this package for its section, so only the config is loaded here;
the parts that need numpy/scipy or the accounting store are imported from their modules:
`gateway.monitoring.windows` (reading the accounting database per window),
`gateway.monitoring.drift` (the divergence maths), `gateway.monitoring.report` (what
`tunegate monitor` prints) and `gateway.monitoring.watch` (the gateway's drift gauges).
"""

from gateway.monitoring.config import MonitorConfig

__all__ = ["MonitorConfig"]
