"""A model file is code: what an export's graph may do, and whether its files are whole.

A SavedModel's graph can hold ops that read or write files, reach the network or call back
into Python, and loading it runs some of them (the TF1 loader tfx-bsl uses runs the restore
op and the init op; `tf.saved_model.load` runs restored resources' initialisers), and
inference the rest. So before anything loads an export, `check_saved_model` reads
`saved_model.pb` as a proto (never loads it) and allows only what `op_allowlist` allows: every
node of the top-level graph and of every function in its library, reachable or not (which
functions run depends on the loader), and every function a node names in an attribute (a name
that is no function of the library is run by TensorFlow as the op of that name). A call
node's `config_proto` may only place the call on devices.

Every export also holds its checkpoint functions, with SaveV2, MergeV2Checkpoints and
RestoreV2 in them (`op_allowlist.CHECKPOINT_OPS`). These are allowed in the saver's own steps
alone (`saver_def`): what its restore op and its save tensor depend on, and the functions those
call, less everything a loader runs otherwise (the signatures, the init ops and collections,
the object graph's functions): a signature that reaches the saver gets no exemption. RestoreV2
only on the restore side, reading from the saver's filename tensor and nothing derived from it,
which the loader feeds with the export's own `variables/variables`; the save ops only on the
save side, which no loader runs. This covers Keras/TF2 exports (`__inference__traced_save_*`
and `__inference__traced_restore_*`, called from the graph) and TF1 savers (`save/SaveV2`,
`save/RestoreV2` nodes in the graph itself) alike.

`check_export_readable` refuses a damaged export (no `saved_model.pb`, one that does not parse,
missing or truncated variables) before a run writes anything, where TensorFlow would fail
inside inference instead.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Iterable, Iterator, Optional

import tensorflow as tf
from google.protobuf import message
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import saved_model_pb2

from segbeam import messages
from segbeam.model import op_allowlist

SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_PREFIX = os.path.join("variables", "variables")

_SAVE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints"})
_RESTORE_OPS = frozenset({"RestoreV2"})
# What a call's `config_proto` may set: where it runs and with how many threads. Anything else
# (a cluster, RPC or coordination service settings, graph rewrites) is refused.
_CALL_CONFIG_FIELDS = frozenset(
  {
    "device_count",
    "gpu_options",
    "pluggable_device_options",
    "allow_soft_placement",
    "log_device_placement",
    "intra_op_parallelism_threads",
    "inter_op_parallelism_threads",
    "experimental",
  }
)
# Ops through which a string tensor passes unchanged: RestoreV2's prefix may reach the saver's
# filename through these alone.
_PASS_THROUGH = frozenset({"Identity", "Snapshot", "StopGradient"})
_CALLS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_FILENAME_OPS = frozenset({"Placeholder", "PlaceholderWithDefault", "Const"})
# A constant of these would be decoded into an object (a tf.data dataset, a list, a handle)
# rather than numbers: no model needs one.
_OPAQUE_DTYPES = frozenset({20, 21})  # DT_RESOURCE, DT_VARIANT


class UnsafeModelError(ValueError):
  """An export whose graph holds ops that reach outside the model."""


class DamagedExportError(ValueError):
  """An export with a missing, unparsable or truncated file."""


@dataclasses.dataclass(frozen=True)
class Finding:
  """A refused op, where it is ('function NAME' or 'node NAME'), and why."""

  op: str
  where: str
  why: str = ""

  def __str__(self) -> str:
    return f"{self.op} in {self.where}" + (f" ({self.why})" if self.why else "")


def read_saved_model(saved_model_dir: str) -> saved_model_pb2.SavedModel:
  """`saved_model.pb` parsed, without loading anything it describes."""
  path = os.path.join(saved_model_dir, SAVED_MODEL_FILE)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise DamagedExportError(f"model damaged: {path} is missing") from None
  except OSError as error:
    raise DamagedExportError(
      f"model damaged: {path} cannot be read: {messages.brief(error)}"
    ) from error
  proto = saved_model_pb2.SavedModel()
  try:
    proto.ParseFromString(data)
  except message.DecodeError as error:
    raise DamagedExportError(
      f"model damaged: {path} is not a SavedModel: {messages.brief(error)}"
    ) from error
  if not proto.meta_graphs:
    raise DamagedExportError(f"model damaged: {path} holds no graph")
  return proto


def _node_name(tensor_or_input: str) -> str:
  return tensor_or_input.lstrip("^").split(":")[0]


def _attr_functions(node) -> Iterator[str]:
  """The function names a node's attributes hold (`f`, `then_branch`, `body`, lists, ...),
  and those nested in a named function's own attributes, which fill the placeholders of the
  function it instantiates."""
  stack = list(node.attr.values())
  while stack:
    value = stack.pop()
    for func in ([value.func] if value.HasField("func") else []) + list(value.list.func):
      yield func.name
      stack.extend(func.attr.values())


def _called(node, functions: set[str]) -> Iterator[str]:
  """The library functions a node calls: by its op, or in function-valued attributes."""
  if node.op in functions:
    yield node.op
  yield from (name for name in _attr_functions(node) if name in functions)


def _ancestors(roots: Iterable[str], inputs: dict[str, list[str]]) -> set[str]:
  seen: set[str] = set()
  stack = [root for root in roots if root in inputs]
  while stack:
    name = stack.pop()
    if name not in seen:
      seen.add(name)
      stack.extend(parent for parent in inputs[name] if parent in inputs)
  return seen


def _function_closure(nodes: Iterable, library: dict, extra: Iterable[str] = ()) -> set[str]:
  """The functions `nodes` call, directly or through other functions."""
  names = set(library)
  stack = [name for node in nodes for name in _called(node, names)] + list(extra)
  seen: set[str] = set()
  while stack:
    name = stack.pop()
    if name in library and name not in seen:
      seen.add(name)
      stack.extend(called for node in library[name].node_def for called in _called(node, names))
  return seen


def _loader_roots(meta_graph) -> tuple[set[str], set[str]]:
  """(nodes, functions) that loaders run other than through the saver: every signature's
  inputs and outputs (the init op is one), every node a collection names (main and legacy init
  ops, table initialisers, ...), the object graph's functions."""
  nodes = {
    _node_name(tensor.name)
    for signature in meta_graph.signature_def.values()
    for tensors in (signature.inputs, signature.outputs)
    for tensor in tensors.values()
  }
  for collection in meta_graph.collection_def.values():
    nodes.update(_node_name(name) for name in collection.node_list.value)
  functions = set(meta_graph.object_graph_def.concrete_functions.keys())
  for obj in meta_graph.object_graph_def.nodes:
    if obj.HasField("function"):
      functions.update(obj.function.concrete_functions)
    if obj.HasField("bare_concrete_function"):
      functions.add(obj.bare_concrete_function.concrete_function_name)
  return nodes, functions


class _Graph:
  """One meta graph's nodes and functions, with who reaches whom."""

  def __init__(self, meta_graph):
    graph = meta_graph.graph_def
    self.meta_graph = meta_graph
    self.nodes = {node.name: node for node in graph.node}
    self.inputs = {name: [_node_name(i) for i in node.input] for name, node in self.nodes.items()}
    self.library = {function.signature.name: function for function in graph.library.function}

  def reach(self, root_nodes: Iterable[str], root_functions: Iterable[str] = ()):
    """(nodes, functions) that `root_nodes` depend on, and the functions they and
    `root_functions` call, transitively."""
    nodes = _ancestors(root_nodes, self.inputs)
    return nodes, _function_closure((self.nodes[n] for n in nodes), self.library, root_functions)

  def callers(self, function: str) -> Iterator[tuple[object, Optional[str]]]:
    """(node, the function it is in or None for the top-level graph) for every node that calls
    `function`, as its op or in any attribute."""
    for node in self.nodes.values():
      if node.op == function or function in _attr_functions(node):
        yield node, None
    for name, body in self.library.items():
      for node in body.node_def:
        if node.op == function or function in _attr_functions(node):
          yield node, name


def _tensor(ref: str) -> str:
  """A top-level graph's input or tensor name as 'node:index'."""
  return ref if ":" in ref else ref + ":0"


def _is_filename(graph: _Graph, ref: str, function: Optional[str], filename: str, depth=0) -> bool:
  """True when the string tensor `ref` (an input of a node in `function`, or of the top-level
  graph when None) is the saver's `filename` tensor ('node:index'), passed on unchanged:
  through identities, and into a called function's argument only by plain calls whose every
  caller passes the filename."""
  if depth > 64:
    return False
  if ref.startswith("^"):
    return False
  if function is None:  # tensors compared whole: 'x' is 'x:0', and 'x:1' another
    tensor = _tensor(ref)
    if tensor == filename:
      return True
    node = graph.nodes.get(_node_name(ref))
    if node is None or node.op not in _PASS_THROUGH or not node.input or not tensor.endswith(":0"):
      return False
    return _is_filename(graph, node.input[0], None, filename, depth + 1)
  body = graph.library[function]
  arguments = [arg.name for arg in body.signature.input_arg]
  if ref in arguments:  # an argument: every call must pass the filename
    index = arguments.index(ref)
    callers = list(graph.callers(function))
    for node, caller_function in callers:
      data = [i for i in node.input if not i.startswith("^")]
      plain = node.op == function or (node.op in _CALLS and node.attr["f"].func.name == function)
      if not plain or index >= len(data):
        return False
      if not _is_filename(graph, data[index], caller_function, filename, depth + 1):
        return False
    return bool(callers)
  nodes = {node.name: node for node in body.node_def}
  node = nodes.get(ref.split(":")[0])
  if node is None or node.op not in _PASS_THROUGH or not node.input:
    return False
  return _is_filename(graph, node.input[0], function, filename, depth + 1)


def _call_config_finding(node, where: str) -> Optional[Finding]:
  if "config_proto" not in node.attr or not node.attr["config_proto"].s:
    return None
  config = config_pb2.ConfigProto()
  try:
    config.ParseFromString(node.attr["config_proto"].s)
  except message.DecodeError:
    return Finding(node.op, where, "an unreadable config_proto")
  fields = {field.name for field, _ in config.ListFields()}
  if config.HasField("experimental") and config.experimental.ListFields():
    fields.add("experimental." + config.experimental.ListFields()[0][0].name)
  odd = sorted(fields - _CALL_CONFIG_FIELDS)
  return Finding(node.op, where, f"its config_proto sets {', '.join(odd)}") if odd else None


def _meta_graph_findings(meta_graph) -> list[Finding]:
  graph = _Graph(meta_graph)
  saver = meta_graph.saver_def
  # The tensor the loader feeds with the export's own variables' path: fed, whatever its node
  # computes, so that node may only be one that reads nothing.
  filename = _tensor(saver.filename_tensor_name) if saver.filename_tensor_name else ""
  filename_node = graph.nodes.get(_node_name(filename)) if filename else None
  if filename_node is None or filename_node.op not in _FILENAME_OPS:
    filename = ""
  roots, root_functions = _loader_roots(meta_graph)
  other_nodes, other_functions = graph.reach(roots, root_functions)
  save_nodes, save_functions = graph.reach([_node_name(saver.save_tensor_name)])
  restore_nodes, restore_functions = graph.reach([_node_name(saver.restore_op_name)])
  # What a loader reaches otherwise, or what nothing names, is not the saver's.
  save_nodes, restore_nodes = save_nodes - other_nodes, restore_nodes - other_nodes
  save_functions -= other_functions
  restore_functions -= other_functions

  def the_savers_own(node, where_function: Optional[str], in_save: bool, in_restore: bool):
    if node.op in _RESTORE_OPS:
      return (
        in_restore
        and bool(filename)
        and bool(node.input)
        and _is_filename(graph, node.input[0], where_function, filename)
      )
    return node.op in _SAVE_OPS and in_save and not in_restore

  def ops_named(holder, where: str, how: str) -> Iterator[Finding]:
    """The functions `holder` (a node, or a function) names in its attributes that the
    library lacks: TensorFlow runs the op of that name."""
    for name in _attr_functions(holder):
      if name not in graph.library:
        why = op_allowlist.refusal_reason(name) or "named as a function the library lacks"
        yield Finding(name, where, f"{how}: {why}")

  def check(node, where: str, where_function: Optional[str], in_save: bool, in_restore: bool):
    if node.op not in graph.library:
      why = op_allowlist.refusal_reason(node.op)
      if why and not (
        node.op in op_allowlist.CHECKPOINT_OPS
        and the_savers_own(node, where_function, in_save, in_restore)
      ):
        yield Finding(node.op, where, why)
    yield from ops_named(node, where, f"called from {node.op}")
    config = _call_config_finding(node, where)
    if config:
      yield config
    if node.op == "Const" and node.attr["value"].tensor.dtype in _OPAQUE_DTYPES:
      yield Finding(node.op, where, "a constant holding a variant or a resource")

  findings = []
  for name, node in graph.nodes.items():
    in_save, in_restore = name in save_nodes, name in restore_nodes
    findings.extend(check(node, f"node {name}", None, in_save, in_restore))
  for name, function in graph.library.items():
    in_save, in_restore = name in save_functions, name in restore_functions
    for node in function.node_def:
      findings.extend(check(node, f"function {name}", name, in_save, in_restore))
    findings.extend(ops_named(function, f"function {name}", "in its attributes"))
  return findings


def denied_ops(saved_model_dir: str) -> list[Finding]:
  """The refused ops in the SavedModel in `saved_model_dir`, each once per place, in graph
  order: the top-level graph first, then the function library."""
  findings: list[Finding] = []
  for meta_graph in read_saved_model(saved_model_dir).meta_graphs:
    findings.extend(f for f in _meta_graph_findings(meta_graph) if f not in findings)
  return findings


# saved_model.pb files found safe in this process, as (real path, size, modification time): a
# local run checks one export from three places (the early session load, the run's checks, the
# handler's load), and a file changed since is checked again.
_found_safe: set[tuple[str, int, int]] = set()


def _identity(saved_model_dir: str) -> Optional[tuple[str, int, int]]:
  try:
    stat = os.stat(os.path.join(saved_model_dir, SAVED_MODEL_FILE))
  except OSError:
    return None  # read_saved_model says why
  return os.path.realpath(saved_model_dir), stat.st_size, stat.st_mtime_ns


def links_outside(saved_model_dir: str) -> list[str]:
  """The files and folders in the export that are links leading out of it: the loader would
  restore variables (or read assets) from wherever they point."""
  root = os.path.realpath(saved_model_dir)
  found = []
  for folder, names, files in os.walk(saved_model_dir):
    for name in names + files:
      path = os.path.join(folder, name)
      target = os.path.realpath(path)
      if os.path.islink(path) and target != root and not target.startswith(root + os.sep):
        found.append(f"{os.path.relpath(path, saved_model_dir)} -> {target}")
  return sorted(found)


def check_saved_model(saved_model_dir: str, *, trust: bool = False) -> None:
  """Raises UnsafeModelError when the SavedModel holds ops the allowlist refuses, or links
  leading out of its folder, unless `trust`; DamagedExportError when its `saved_model.pb` is
  missing or does not parse."""
  if trust:
    return
  identity = _identity(saved_model_dir)
  if identity is not None and identity in _found_safe:
    return
  links = links_outside(saved_model_dir)
  if links:
    raise UnsafeModelError(
      f"model refused: {saved_model_dir} holds links leading out of it ({', '.join(links[:3])})"
      "; copy the files in, or pass --trust-model if you trust it"
    )
  first: dict[str, Finding] = {}
  for finding in denied_ops(saved_model_dir):
    first.setdefault(finding.op, finding)  # where each op is first (a function has copies)
  if first:
    shown = ", ".join(map(str, list(first.values())[:3]))
    more = f" and {len(first) - 3} more ops" if len(first) > 3 else ""
    raise UnsafeModelError(
      f"model refused: its graph holds ops segbeam does not run in a model ({shown}{more}); "
      "pass --trust-model if you trust it"
    )
  if identity is not None:
    _found_safe.add(identity)


_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def _data_files(prefix: str) -> list[str]:
  """The checkpoint's data shards, by the count their names give; DamagedExportError when one
  is missing."""
  found = glob.glob(glob.escape(prefix) + ".data-*-of-*")
  counts = {int(m.group(2)) for m in map(_SHARD.search, found) if m}
  shards = max(counts, default=1)
  expected = [f"{prefix}.data-{i:05d}-of-{shards:05d}" for i in range(shards)]
  for path in expected:
    if not os.path.isfile(path):
      raise DamagedExportError(f"model damaged: {path} is missing")
  return expected


def check_export_readable(export_dir: str) -> None:
  """Raises DamagedExportError naming the file when the local export `export_dir` is not whole:
  `saved_model.pb` missing or unparsable, the variables' index or data missing, or any
  variable not readable in full (TensorFlow checks each one's checksum as it reads)."""
  read_saved_model(export_dir)
  prefix = os.path.join(export_dir, VARIABLES_PREFIX)
  index = prefix + ".index"
  if not os.path.isfile(index):
    raise DamagedExportError(f"model damaged: {index} is missing")
  data = _data_files(prefix)
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception as error:  # any unreadable index
    raise DamagedExportError(
      f"model damaged: {index} cannot be read: {messages.brief(error)}"
    ) from error
  for name in sorted(reader.get_variable_to_dtype_map()):
    try:
      reader.get_tensor(name)
    except Exception as error:  # truncated, corrupt, ...
      where = data[0] if len(data) == 1 else f"{prefix}.data-*"
      raise DamagedExportError(
        f"model damaged: {where}: checkpoint entry {name} cannot be read: {messages.brief(error)}"
      ) from error
