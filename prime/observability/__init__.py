"""Watching a running network: Prometheus ``/metrics`` (``server``, ``collectors``), progress
for long work (``progress``) and the HTML run report (``report``)."""
