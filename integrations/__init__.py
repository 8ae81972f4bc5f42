"""Adapters to real services (Label Studio, MLflow). They hold no method logic: they translate
between the services' APIs and dataeff's plain types (``dataeff.data.Example``, dataclasses)."""
