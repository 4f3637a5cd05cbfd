"""InferenceSession: onnxruntime's API on qrt's plan.

    load -> check -> optimize -> place on providers -> plan -> run

Each stage is a function of its own (:mod:`qrt.model`, :mod:`qrt.optimizer`, :mod:`qrt.plan`), so
it can be called and inspected on its own; the session only strings them together.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import tempfile
import time

import numba
import numpy as np
import onnx

from .errors import InvalidArgument, InvalidModel, RunTerminated
from .kernels.cpu.threads import num_threads, require_threadsafe_layer, set_num_threads
from .model import (check_model, load_model, model_label, numpy_dtype, opset_imports, override_free_dimensions,
                    shape_of, type_string)
from .memory import MemoryLimit, memory_limit
from .plan import Profiler, build_plan
from .providers import resolve_providers
from .values import TensorSequence, container_feed, describe, to_user


log = logging.getLogger("qrt.session")

# onnxruntime's severities (0 verbose, 1 info, 2 warning, 3 error, 4 fatal) as logging levels.
_LOGGING_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL}


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class _Options:
    """Options objects that refuse a setting they do not know, as onnxruntime's do, rather than keep
    an attribute nothing reads (``enable_mem_pattern``, say, set on qrt would change nothing)."""

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in self._known:
            raise AttributeError(f"qrt.{type(self).__name__} has no option {name!r}; qrt honours "
                                 f"{', '.join(sorted(self._known))}")
        object.__setattr__(self, name, value)


class SessionOptions(_Options):
    """The subset of onnxruntime's SessionOptions that qrt honours, with the same names.

    qrt runs a graph's nodes one after another, so ``inter_op_num_threads`` must be 0 or 1 and
    ``execution_mode`` ORT_SEQUENTIAL; a session refuses other values rather than ignore them.
    Messages go to the ``qrt.session`` logger when at least as severe as ``log_severity_level``
    (0 verbose .. 4 fatal); at 0, each run is logged, and with ``log_verbosity_level`` >= 1 every
    tensor it produces too.

    ``memory_limit_bytes`` (qrt's own; also settable as the session config entry
    ``qrt.memory_limit_bytes``) caps the bytes of the tensors one run creates: a run that would pass
    it raises :class:`qrt.errors.MemoryLimitExceeded` before the allocation (what is counted and
    what is guaranteed: :mod:`qrt.memory`). 0 or None, the default, sets no limit.
    """

    def __init__(self):
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_op_num_threads = 0
        self.inter_op_num_threads = 0
        self.execution_mode = ExecutionMode.ORT_SEQUENTIAL
        self.enable_profiling = False
        self.profile_file_prefix = "qrt_profile"
        # At ORT_ENABLE_ALL the saved model may hold qrt::FusedElementwise nodes that only qrt runs;
        # save at ORT_ENABLE_EXTENDED for a model onnxruntime runs too.
        self.optimized_model_filepath = ""
        self.log_severity_level = 2
        self.log_verbosity_level = 0
        self.logid = ""
        # qrt's own: run DequantizeLinear -> op -> QuantizeLinear groups on integer kernels.
        self.enable_qdq_integer_execution = True
        self.memory_limit_bytes = None
        self._free_dims_by_name = {}
        self._free_dims_by_denotation = {}

    _known = frozenset(("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads",
                        "execution_mode", "enable_profiling", "profile_file_prefix", "optimized_model_filepath",
                        "log_severity_level", "log_verbosity_level", "logid", "enable_qdq_integer_execution",
                        "memory_limit_bytes"))
    # Session config entries (onnxruntime's string key/value settings) qrt honours, as the option each sets.
    _config_entries = {"qrt.memory_limit_bytes": "memory_limit_bytes"}

    def add_session_config_entry(self, key: str, value: str):
        """onnxruntime's string-keyed settings; qrt honours ``qrt.memory_limit_bytes`` and refuses the rest."""
        option = self._config_entries.get(key)
        if option is None:
            raise InvalidArgument(f"session config entry {key!r}: qrt honours only "
                                  f"{', '.join(sorted(self._config_entries))}")
        setattr(self, option, memory_limit(value, f"session config entry {key!r}"))

    def get_session_config_entry(self, key: str) -> str:
        option = self._config_entries.get(key)
        if option is None:
            raise InvalidArgument(f"session config entry {key!r} is not set")
        value = getattr(self, option)
        return "0" if value is None else str(value)

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int):
        """Fix the inputs' symbolic dimension ``dim_name`` to ``dim_value``: get_inputs() reports the
        value, shapes are inferred with it, and feeds must match it."""
        self._free_dims_by_name[str(dim_name)] = _dimension_value(dim_name, dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int):
        """Fix every input dimension whose denotation is ``dim_denotation`` (e.g. 'DATA_BATCH')."""
        self._free_dims_by_denotation[str(dim_denotation)] = _dimension_value(dim_denotation, dim_value)


def _dimension_value(key, value):
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise InvalidArgument(f"free dimension override {key!r}: the value must be a non-negative integer, "
                              f"got {value!r}")
    return int(value)


class RunOptions(_Options):
    """Per-run options: ``terminate`` set (from any thread) stops the run at the next node with
    :class:`qrt.errors.RunTerminated`; ``log_severity_level``/``log_verbosity_level``/``logid``
    govern the run's messages as the session options do the session's. A run given RunOptions
    walks its plan a step at a time to check ``terminate`` between nodes, which costs a little
    per node over a run without them."""

    def __init__(self):
        self.log_severity_level = 2
        self.log_verbosity_level = 0
        self.logid = ""
        self.terminate = False

    _known = frozenset(("log_severity_level", "log_verbosity_level", "logid", "terminate"))


class NodeArg:
    """A graph input or output as onnxruntime describes it."""

    def __init__(self, name, shape, type_):
        self.name = name
        self.shape = shape
        self.type = type_

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class ModelMetadata:
    def __init__(self, model: onnx.ModelProto):
        self.producer_name = model.producer_name
        self.graph_name = model.graph.name
        self.domain = model.domain
        self.description = model.doc_string
        self.graph_description = model.graph.doc_string
        self.version = model.model_version
        self.custom_metadata_map = {p.key: p.value for p in model.metadata_props}


def _optimization_passes(level):
    if int(level) <= 0:
        return None
    from .optimizer import passes_for_level
    return passes_for_level(int(level))


def _check_options(options, providers, provider_options, kwargs):
    """Refuse, naming it, every option qrt would otherwise accept and not honour."""
    if kwargs:
        raise InvalidArgument(f"InferenceSession got unsupported keyword argument(s) {sorted(kwargs)}; qrt "
                              f"takes path_or_bytes, sess_options, providers and provider_options")
    if options.inter_op_num_threads not in (0, 1):
        raise InvalidArgument(f"SessionOptions.inter_op_num_threads={options.inter_op_num_threads!r}: qrt runs "
                              f"a graph's nodes one at a time, so only 0 or 1 can be honoured "
                              f"(intra_op_num_threads sets the threads inside each node)")
    if options.execution_mode != ExecutionMode.ORT_SEQUENTIAL:
        raise InvalidArgument(f"SessionOptions.execution_mode={options.execution_mode!r}: qrt runs a graph's "
                              f"nodes one at a time; only ExecutionMode.ORT_SEQUENTIAL can be honoured")
    _check_log_levels("SessionOptions", options)
    memory_limit(options.memory_limit_bytes)
    entries = [(e[0], e[1]) for e in providers or () if isinstance(e, (tuple, list)) and len(e) > 1]
    if provider_options is not None:
        if providers is None or len(provider_options) != len(providers):
            raise InvalidArgument("provider_options must be a list with one dict per entry of providers")
        entries += list(zip(providers, provider_options))
    for provider, settings in entries:
        if settings:
            raise InvalidArgument(f"provider options {dict(settings)!r} for {provider!r}: qrt's providers take "
                                  f"no options")


def _check_log_levels(owner, options):
    severity, verbosity = options.log_severity_level, options.log_verbosity_level
    if isinstance(severity, bool) or severity not in _LOGGING_LEVELS:
        raise InvalidArgument(f"{owner}.log_severity_level={severity!r}: must be 0 (verbose) .. 4 (fatal)")
    if isinstance(verbosity, bool) or not isinstance(verbosity, int) or verbosity < 0:
        raise InvalidArgument(f"{owner}.log_verbosity_level={verbosity!r}: must be a non-negative integer")


def _memory_owner(array):
    """The object at the end of ``array``'s ``base`` chain: the owner of the memory it views."""
    owner = array
    while (base := getattr(owner, "base", None)) is not None:
        owner = base
    return owner


def _fresh(array, constants, taken):
    """``array``, or a copy when its memory belongs to a constant or to something in ``taken``."""
    if not isinstance(array, np.ndarray):
        return array
    owner = id(_memory_owner(array))
    if owner in constants or owner in taken:
        return array.copy()
    taken.add(owner)
    return array


def _arrays(value):
    """The arrays a plan value holds: itself, or a sequence's elements."""
    if isinstance(value, np.ndarray):
        return (value,)
    if isinstance(value, (list, tuple, TensorSequence)):
        return [a for a in value if isinstance(a, np.ndarray)]
    return ()


def _constant_roots(plan) -> dict:
    """id -> owner of the memory of every constant of ``plan`` and its subplans. The plan keeps the
    owners alive, so their ids stay theirs for the session's life."""
    roots, pending = {}, [plan]
    while pending:
        current = pending.pop()
        for value in current.constants.values():
            for array in _arrays(value):
                owner = _memory_owner(array)
                roots[id(owner)] = owner
        pending.extend(current.subplans)
    return roots


def _check_initializer_sizes(graph, label):
    """Refuse initializers of unknown type or whose stored data does not fill their dims, before the
    optimizer and the fusions read them (their numpy conversions fail with bare KeyErrors/ValueErrors)."""
    for tensor in graph.initializer:
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            raise InvalidModel(f"{label}: initializer {tensor.name!r} has unknown data type "
                               f"{tensor.data_type}") from None
        problem = None
        if any(d < 0 for d in tensor.dims):
            problem = f"negative dims {list(tensor.dims)}"
        elif (tensor.HasField("raw_data") and tensor.data_location != onnx.TensorProto.EXTERNAL
              and tensor.data_type not in _SUB_BYTE_TYPES and tensor.data_type != onnx.TensorProto.STRING):
            expected = int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
            if len(tensor.raw_data) != expected:
                problem = f"{len(tensor.raw_data)} bytes of data for dims {list(tensor.dims)} ({expected} expected)"
        if problem:
            raise InvalidModel(f"{label}: initializer {tensor.name!r} has {problem}")


_SUB_BYTE_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, n)}


def _has_qdq(model) -> bool:
    ops = {n.op_type for n in model.graph.node}
    return "DequantizeLinear" in ops and "QuantizeLinear" in ops


class InferenceSession:
    """Run an ONNX model on qrt's kernels: ``InferenceSession(path_or_bytes_or_proto).run(None, feeds)``."""

    def __init__(self, path_or_bytes, sess_options: SessionOptions | None = None, providers=None,
                 provider_options=None, **kwargs):
        self._options = sess_options or SessionOptions()
        _check_options(self._options, providers, provider_options, kwargs)
        require_threadsafe_layer()
        model = load_model(path_or_bytes)
        self._label = model_label(model, path_or_bytes)
        self._model_path = os.fspath(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else None
        override_free_dimensions(model, self._options._free_dims_by_name, self._options._free_dims_by_denotation,
                                 self._label)
        model = check_model(model, self._label)
        _check_initializer_sizes(model.graph, self._label)
        self._metadata = ModelMetadata(model)
        self._inputs, self._overridable = self._describe_inputs(model.graph)
        self._outputs = [NodeArg(o.name, shape_of(o.type), type_string(o.type)) for o in model.graph.output]

        passes = _optimization_passes(self._options.graph_optimization_level)
        if passes:
            from .optimizer import optimize
            model = optimize(model, passes=passes)
        if self._options.enable_qdq_integer_execution and _has_qdq(model):
            from .fusion import fuse_qdq_groups
            model = fuse_qdq_groups(model)
        self._providers = resolve_providers(providers)
        if int(self._options.graph_optimization_level) >= GraphOptimizationLevel.ORT_ENABLE_EXTENDED \
                and all(p.on_host for p in self._providers):
            # Runtime-only fusions, at the level where onnxruntime applies its own FusedConv/FusedGemm.
            # Only the host kernels implement the fused ops, so device sessions keep Conv/Gemm on the device.
            # At ORT_ENABLE_ALL the fusions may emit what only qrt runs (FusedElementwise, attention
            # with a broadcast mask), as onnxruntime's layout passes make its own output hardware-specific.
            from .fusion import (fuse_activations, fuse_dequantize_add, fuse_dynamic_matmuls, fuse_elementwise,
                                 fuse_per_row_matmuls, fuse_qlinear_tables, fuse_transformer, to_channels_last)
            qrt_only = int(self._options.graph_optimization_level) >= GraphOptimizationLevel.ORT_ENABLE_ALL
            model = fuse_dynamic_matmuls(model)
            # Before the transformer fusions, which match on the shapes these give weight-only models.
            from .fusion.weight_only import fuse_nbits_bias, infer_weight_only_shapes
            model = fuse_nbits_bias(infer_weight_only_shapes(model))
            if qrt_only:
                # Before the element-wise fusions, which would otherwise take the pattern's float nodes.
                model = fuse_per_row_matmuls(model)
            model = fuse_activations(fuse_transformer(model, broadcast_masks=qrt_only))
            if qrt_only:
                # Tables first: the float nodes between DequantizeLinear and QuantizeLinear belong to them.
                model = to_channels_last(fuse_elementwise(fuse_dequantize_add(fuse_qlinear_tables(model))))
        if self._options.optimized_model_filepath:
            _save_atomically(model, self._options.optimized_model_filepath)
        self.model = model   # the checked, optimized model the plan was built from (inspectable)

        self._plan = build_plan(model.graph, opset_imports(model), self._providers, label=self._label)
        self._constant_roots = _constant_roots(self._plan)
        limit = memory_limit(self._options.memory_limit_bytes)
        self._memory = (None if limit is None else
                        MemoryLimit(self._plan, model.graph, opset_imports(model), limit, self._label))
        self._input_specs = {a.name: a for a in self._inputs}
        self._expected_dtypes = {i.name: numpy_dtype(i.type.tensor_type.elem_type)
                                 for i in model.graph.input if i.type.WhichOneof("value") == "tensor_type"}
        # Sequence and optional inputs, fed as lists of arrays / None and checked by qrt.values.
        self._container_types = {i.name: i.type for i in model.graph.input
                                 if i.type.WhichOneof("value") in ("sequence_type", "optional_type")}
        self._profiler = Profiler() if self._options.enable_profiling else None
        self._profile_start = time.time()
        self._log(self._options, logging.INFO, "session ready: providers %s, optimization level %d, %d steps",
                  self.get_providers(), int(self._options.graph_optimization_level), len(self._plan.steps))

    def _log(self, options, level, message, *args):
        if level >= _LOGGING_LEVELS[options.log_severity_level]:
            log.log(level, "%s%s: " + message, options.logid and f"[{options.logid}] ", self._label, *args)

    @staticmethod
    def _describe_inputs(graph):
        initializers = {t.name for t in graph.initializer}
        inputs, overridable = [], []
        for i in graph.input:
            arg = NodeArg(i.name, shape_of(i.type), type_string(i.type))
            (overridable if i.name in initializers else inputs).append(arg)
        return inputs, overridable

    # --- onnxruntime's introspection API -------------------------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_overridable_initializers(self):
        return list(self._overridable)

    def get_providers(self):
        return [p.name for p in self._providers]

    def get_provider_options(self):
        return {p.name: {} for p in self._providers}

    def get_session_options(self):
        return self._options

    def get_modelmeta(self):
        return self._metadata

    @property
    def plan(self):
        return self._plan

    # --- running ---------------------------------------------------------------------------------
    def run(self, output_names, input_feed, run_options=None):
        """Run the model: ``output_names`` None for all outputs; ``input_feed`` maps names to arrays."""
        feeds = self._check_feeds(input_feed)
        if output_names:
            all_names = [o.name for o in self._outputs]
            unknown = [n for n in output_names if n not in all_names]
            if unknown:
                raise InvalidArgument(f"{self._label}: unknown output name(s) {unknown}; outputs are {all_names}")
        threads = int(self._options.intra_op_num_threads or 0)
        if threads > 0:
            threads = min(threads, numba.config.NUMBA_NUM_THREADS)
            caller_threads = num_threads()
        if threads > 0 and caller_threads != threads:
            # The count is per calling thread: set it for the run, and give the caller's back after.
            set_num_threads(threads)
            try:
                values = self._run_plan(feeds, run_options)
            finally:
                set_num_threads(caller_threads)
        else:
            values = self._run_plan(feeds, run_options)
        if output_names:
            by_name = dict(zip(all_names, values))
            values = [by_name[n] for n in output_names]
        return self._unaliased([to_user(v) for v in values], feeds)

    def _run_plan(self, feeds, run_options):
        guard = None if self._memory is None else self._memory.check(feeds)
        if run_options is None:
            options = self._options
            verbose = options.log_severity_level == 0
            if not verbose and guard is None:
                return self._plan.run(feeds, profiler=self._profiler)
        else:
            if not isinstance(run_options, RunOptions):
                raise InvalidArgument(f"{self._label}: run_options must be a qrt.RunOptions, "
                                      f"got {type(run_options).__name__}")
            _check_log_levels("RunOptions", run_options)
            options = run_options
            verbose = options.log_severity_level == 0
        tensors = verbose and options.log_verbosity_level >= 1

        def watch(name, value):
            # Checked after every node: a terminate set by another thread stops the run at the next one.
            if run_options is not None and run_options.terminate:
                raise RunTerminated(f"{self._label}: run stopped after producing {name!r}: "
                                    f"RunOptions.terminate is set")
            if tensors:
                self._log(options, logging.DEBUG, "produced %s %s", name, describe(value))

        if run_options is not None and run_options.terminate:
            raise RunTerminated(f"{self._label}: run not started: RunOptions.terminate is set")
        start = time.perf_counter()
        values = self._plan.run(feeds, profiler=self._profiler, observe=watch, before=guard)
        if verbose:
            self._log(options, logging.DEBUG, "ran on feeds %s in %.3f ms",
                      {n: describe(v) for n, v in feeds.items()}, 1e3 * (time.perf_counter() - start))
        return values

    def _unaliased(self, outputs, feeds):
        """``outputs`` with a fresh copy of every array that shares memory with a constant, a feed or
        an earlier output, so a caller writing into a result cannot corrupt later runs or its own
        feeds (onnxruntime returns fresh arrays). Kernel results own fresh buffers, so the common
        case costs a walk up each output's ``base`` chain and a set lookup."""
        constants = self._constant_roots
        taken = {id(_memory_owner(a)) for value in feeds.values() for a in _arrays(value)}
        for index, value in enumerate(outputs):
            if isinstance(value, np.ndarray):
                outputs[index] = _fresh(value, constants, taken)
            elif isinstance(value, list):
                outputs[index] = [_fresh(a, constants, taken) for a in value]
        return outputs

    def _check_feeds(self, input_feed):
        if not isinstance(input_feed, dict):
            raise InvalidArgument(f"{self._label}: input_feed must be a dict of name -> numpy array, "
                                  f"got {type(input_feed).__name__}")
        expected = self._input_specs
        unknown = [n for n in input_feed if n not in expected]
        if unknown:
            overridable = {a.name for a in self._overridable}
            hint = (" (initializers cannot be overridden in qrt)" if any(n in overridable for n in unknown) else "")
            raise InvalidArgument(f"{self._label}: unknown input name(s) {unknown}{hint}; "
                                  f"the model's inputs are {list(expected)}")
        missing = [n for n in expected if n not in input_feed]
        if missing:
            raise InvalidArgument(f"{self._label}: missing input(s) {missing}; the model's inputs are "
                                  + ", ".join(f"{a.name} {a.type} {a.shape}" for a in self._inputs))
        feeds = {}
        for name, value in input_feed.items():
            if name in self._container_types:
                feeds[name] = container_feed(self._label, name, value, self._container_types[name])
                continue
            spec = expected[name]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            want = self._expected_dtypes.get(name)
            if want is not None and value.dtype != want and not (want == object and value.dtype.kind in "US"):
                raise InvalidArgument(f"{self._label}: input {name!r} has dtype {value.dtype}, "
                                      f"expected {want} ({spec.type})")
            if spec.shape is not None:
                if value.ndim != len(spec.shape):
                    raise InvalidArgument(f"{self._label}: input {name!r} has rank {value.ndim} "
                                          f"(shape {list(value.shape)}), expected rank {len(spec.shape)} "
                                          f"(shape {spec.shape})")
                for axis, (got, dim) in enumerate(zip(value.shape, spec.shape)):
                    if isinstance(dim, int) and got != dim:
                        raise InvalidArgument(f"{self._label}: input {name!r} has shape {list(value.shape)}, "
                                              f"expected {spec.shape} (dimension {axis} must be {dim})")
            if want == object and value.dtype.kind in "US":
                value = value.astype(object)
            feeds[name] = value
        return feeds

    # --- profiling ------------------------------------------------------------------------------
    def end_profiling(self) -> str:
        """Write the Chrome-trace JSON of every node run so far and return its path ('' if disabled)."""
        if self._profiler is None:
            return ""
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(self._profile_start))
        path = f"{self._options.profile_file_prefix}_{stamp}.json"
        events = list(self._profiler.events)
        _write_atomically(path, json.dumps(events, indent=0).encode())
        self._profiler = Profiler()
        return path


def _write_atomically(path: str, data: bytes):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".qrt-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_atomically(model: onnx.ModelProto, path: str):
    _write_atomically(os.fspath(path), model.SerializeToString())
