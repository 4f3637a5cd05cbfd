"""Constant, Identity: nodes whose output is an input or an attribute, bound or folded at plan time."""
import numpy as np

from ..errors import InvalidModel
from ..registry import register
from .base import Op


@register("Constant", 1)
class Constant(Op):
    def __init__(self, value=None, sparse_value=None, value_float=None, value_floats=None, value_int=None,
                 value_ints=None, value_string=None, value_strings=None):
        given = [(k, v) for k, v in dict(value=value, sparse_value=sparse_value, value_float=value_float,
                                         value_floats=value_floats, value_int=value_int, value_ints=value_ints,
                                         value_string=value_string, value_strings=value_strings).items()
                 if v is not None]
        if len(given) != 1:
            raise InvalidModel(f"Constant needs exactly one value attribute, got {[k for k, _ in given]}")
        kind, v = given[0]
        if kind in ("value", "sparse_value"):
            self.value = np.asarray(v)
        elif kind == "value_float":
            self.value = np.array(v, dtype=np.float32)
        elif kind == "value_floats":
            self.value = np.array(v, dtype=np.float32).reshape(-1)
        elif kind == "value_int":
            self.value = np.array(v, dtype=np.int64)
        elif kind == "value_ints":
            self.value = np.array(v, dtype=np.int64).reshape(-1)
        elif kind == "value_string":
            self.value = np.array(v, dtype=object)
        else:
            self.value = np.array(v, dtype=object).reshape(-1)

    def run(self):
        return self.value


@register("Identity", 1)
class Identity(Op):
    def run(self, x):
        return x
