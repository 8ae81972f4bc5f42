"""Prefect flows: thin orchestration over ``dataeff`` (the method) and ``integrations`` (services).

- :mod:`flows.bootstrap`: score the pool's confidence, queue the low-confidence batch and the eval split.
- :mod:`flows.loop`: one loop iteration (the scheduled unit).
- :mod:`flows.calibrate`: fit a model family's calibration from MLflow runs.
- :mod:`flows.serve`: interval-scheduled deployments, one run per project at a time.
- :mod:`flows.demo`: the whole loop on one machine with a simulated annotator.
"""
