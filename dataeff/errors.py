"""Exception types users see. Every message names the offending item and what to do."""


class DataEffError(Exception):
    """Base class of every error dataeff raises on purpose (the CLI prints these without a traceback)."""


class DataError(DataEffError, ValueError):
    """Bad input data: a file, a row or a field. The message names the file/row and the fix."""


class ModelLoadError(DataEffError):
    """A model could not be found or loaded. The message names the source and the fix."""
