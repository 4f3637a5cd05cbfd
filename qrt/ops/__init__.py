"""Every CPU op, one module per family; importing this package registers them all."""
from . import constant, elementwise  # noqa: F401
