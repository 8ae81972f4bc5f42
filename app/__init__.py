"""The application layer: the ``dataeff`` command line and its handlers.

Sits above everything else and is the only layer that parses arguments: ``dataeff/`` (the method),
``integrations/`` (service adapters) and ``flows/`` (orchestration) take plain typed arguments and
never import from here. ``app.cli`` builds the command tree; ``app.commands`` handles the project
commands (create, bootstrap, loop, unlock, serve, demo, calibrate-family) by calling flows.
"""
