"""The pure core of Archipel, shared by the control plane, the agent and the CLI.

Selectors and policy matching, scheduling and replica division, overrides,
validation, the kind registry and the error vocabulary, and how a member's manifest
is built from a template. Nothing here does I/O or imports ``controlplane``,
``agent`` or the CLI; ``make lint`` checks that (import-linter, pyproject.toml).
"""
