"""The Clearhouse services. Importing `shared` first makes the generated `clearhouse`
protobuf package importable (see shared/__init__.py)."""

import shared  # noqa: F401
