"""dataeff: predict a task's data efficiency from 32 labels (CoS-Low) and track it while labeling.

The package is a plain library: it never imports a network service client. Adapters to
Label Studio and MLflow live in ``integrations/``; Prefect flows in ``flows/``.
"""

__version__ = "0.1.0"
