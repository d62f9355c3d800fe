"""A model file is code: what an export's graph may do, and whether its files are whole.

A SavedModel's graph can hold ops that read or write files, reach the network or call back
into Python, and loading it runs some of them (the TF1 loader tfx-bsl uses runs the restore
op and the init op; `tf.saved_model.load` runs restored resources' initialisers), and
inference the rest. So before anything loads an export, `check_saved_model` reads
`saved_model.pb` as a proto (never loads it) and refuses one whose graph holds any of
`DENIED_OPS`, wherever it is: the top-level graph and every function in its library, reachable
or not, since which functions run depends on the loader.

Every export also holds its checkpoint functions, with SaveV2, MergeV2Checkpoints and
RestoreV2 in them, so these ops are allowed inside the saver's own subgraph (`saver_def`)
alone: the nodes its save tensor and its restore op depend on, and the functions those call.
The save ops only on the save side, which no loader runs (loading never saves), and only
where nothing else reaches; RestoreV2 only on the restore side (a checkpoint read into the
variables, which the TF1 loader runs at every load). A node or function that anything else
depends on or calls (a signature, the init op, the object graph's functions), or that both
sides reach, is exempt from nothing. This covers Keras/TF2 exports
(`__inference__traced_save_*` and `__inference__traced_restore_*`, called from the graph) and
TF1 savers (`save/SaveV2`, `save/RestoreV2` nodes in the graph itself) alike.

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
from tensorflow.core.protobuf import saved_model_pb2

SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_PREFIX = os.path.join("variables", "variables")

DENIED_OPS = frozenset(
  {
    # Files named by a tensor or an attribute: read, written, listed, memory-mapped, or read
    # as a vocabulary, a checkpoint to remap, a proto descriptor (`descriptor_source`).
    "ReadFile",
    "WriteFile",
    "MatchingFiles",
    "ImmutableConst",
    "LoadAndRemapMatrix",
    "GenerateVocabRemapping",
    "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2",
    "RecordInput",
    "DecodeProtoV2",
    "EncodeProto",
    "DumpTensor",
    "CalibrationStatisticsSaver",
    "FileSystemSetConfiguration",
    # Checkpoints: write, read, merge (which deletes the merged files). Allowed only in the
    # saver's own subgraph (module docstring).
    "Save",
    "SaveSlices",
    "SaveV2",
    "Restore",
    "RestoreSlice",
    "RestoreV2",
    "MergeV2Checkpoints",
    "DTensorRestoreV2",
    # TF1 readers: each reads the files it is given.
    "WholeFileReader",
    "WholeFileReaderV2",
    "TextLineReader",
    "TextLineReaderV2",
    "TFRecordReader",
    "TFRecordReaderV2",
    "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2",
    "LMDBReader",
    # tf.data sources and sinks on files (a cache with a filename is one), and the tf.data
    # service, which is reached over the network.
    "TFRecordDataset",
    "TFRecordDatasetV2",
    "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2",
    "TextLineDataset",
    "CSVDataset",
    "CSVDatasetV2",
    "ExperimentalCSVDataset",
    "LMDBDataset",
    "ExperimentalLMDBDataset",
    "SqlDataset",
    "ExperimentalSqlDataset",
    "MatchingFilesDataset",
    "ExperimentalMatchingFilesDataset",
    "LoadDataset",
    "SaveDataset",
    "SaveDatasetV2",
    "DistributedSave",
    "SnapshotDataset",
    "SnapshotDatasetV2",
    "SnapshotDatasetReader",
    "SnapshotNestedDatasetReader",
    "SnapshotChunkDataset",
    "ListSnapshotChunksDataset",
    "CacheDataset",
    "CacheDatasetV2",
    "DatasetToTFRecord",
    "ExperimentalDatasetToTFRecord",
    "DataServiceDataset",
    "DataServiceDatasetV2",
    "DataServiceDatasetV3",
    "DataServiceDatasetV4",
    "RegisterDataset",
    "RegisterDatasetV2",
    # Summaries and debugging: event files, a database, a debugger's file:// or grpc:// URL
    # (`debug_urls`, `debug_ops_spec`), tf.print to a file:// stream.
    "SummaryWriter",
    "CreateSummaryFileWriter",
    "CreateSummaryDbWriter",
    "WriteSummary",
    "WriteScalarSummary",
    "WriteHistogramSummary",
    "WriteImageSummary",
    "WriteAudioSummary",
    "WriteGraphSummary",
    "WriteRawProtoSummary",
    "ImportEvent",
    "FlushSummaryWriter",
    "CloseSummaryWriter",
    "StatsAggregatorSetSummaryWriter",
    "DebugIdentity",
    "DebugIdentityV2",
    "DebugIdentityV3",
    "DebugNanCount",
    "DebugNumericSummary",
    "DebugNumericSummaryV2",
    "Copy",
    "CopyHost",
    "PrintV2",
    # Python: runs whatever function the loading process has registered under the token.
    "PyFunc",
    "PyFuncStateless",
    "EagerPyFunc",
    # The network: RPC clients and servers, collectives and send/receive between tasks.
    "RpcServer",
    "RpcServerRegister",
    "RpcServerStart",
    "RpcClient",
    "RpcCall",
    "RpcCheckStatus",
    "RpcGetValue",
    "DeleteRpcFutureResource",
    "CollectiveReduce",
    "CollectiveReduceV2",
    "CollectiveReduceV3",
    "CollectiveGather",
    "CollectiveGatherV2",
    "CollectiveBcastSend",
    "CollectiveBcastSendV2",
    "CollectiveBcastRecv",
    "CollectiveBcastRecvV2",
    "CollectiveAllToAllV2",
    "CollectiveAllToAllV3",
    "CollectiveReduceScatterV2",
    "CollectiveInitializeCommunicator",
    "CollectiveAssignGroupV2",
    "Send",
    "Recv",
    "_Send",
    "_Recv",
    "_HostSend",
    "_HostRecv",
  }
)
_SAVE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints"})
_RESTORE_OPS = frozenset({"RestoreV2"})


class UnsafeModelError(ValueError):
  """An export whose graph holds ops that reach outside the model."""


class DamagedExportError(ValueError):
  """An export with a missing, unparsable or truncated file."""


@dataclasses.dataclass(frozen=True)
class Finding:
  """A denied op and where it is: 'function NAME' or 'node NAME'."""

  op: str
  where: str

  def __str__(self) -> str:
    return f"{self.op} in {self.where}"


def read_saved_model(saved_model_dir: str) -> saved_model_pb2.SavedModel:
  """`saved_model.pb` parsed, without loading anything it describes."""
  path = os.path.join(saved_model_dir, SAVED_MODEL_FILE)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise DamagedExportError(f"model damaged: {path} is missing") from None
  except OSError as error:
    raise DamagedExportError(f"model damaged: {path} cannot be read: {_one_line(error)}") from error
  proto = saved_model_pb2.SavedModel()
  try:
    proto.ParseFromString(data)
  except message.DecodeError as error:
    raise DamagedExportError(
      f"model damaged: {path} is not a SavedModel: {_one_line(error)}"
    ) from error
  if not proto.meta_graphs:
    raise DamagedExportError(f"model damaged: {path} holds no graph")
  return proto


def _node_name(tensor_or_input: str) -> str:
  return tensor_or_input.lstrip("^").split(":")[0]


def _called(node, functions: set[str]) -> Iterator[str]:
  """The library functions a node calls: by its op, or in function-valued attributes."""
  if node.op in functions:
    yield node.op
  for value in node.attr.values():
    if value.HasField("func"):
      yield value.func.name
    yield from (func.name for func in value.list.func)


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


def _meta_graph_findings(meta_graph) -> list[Finding]:
  graph = meta_graph.graph_def
  nodes = {node.name: node for node in graph.node}
  inputs = {name: [_node_name(i) for i in node.input] for name, node in nodes.items()}
  library = {function.signature.name: function for function in graph.library.function}
  saver = meta_graph.saver_def
  save_root = _node_name(saver.save_tensor_name) if saver.save_tensor_name else ""
  restore_root = _node_name(saver.restore_op_name) if saver.restore_op_name else ""
  save_nodes = _ancestors([save_root], inputs)
  restore_nodes = _ancestors([restore_root], inputs)
  # Whatever anything else depends on, or calls, or the TF2 loader may call (the object
  # graph's functions), is not the saver's alone.
  other_nodes = _ancestors([n for n in nodes if n not in save_nodes | restore_nodes], inputs)
  other_functions = _function_closure(
    (nodes[n] for n in other_nodes),
    library,
    extra=meta_graph.object_graph_def.concrete_functions.keys(),
  )
  save_functions = _function_closure((nodes[n] for n in save_nodes), library)
  restore_functions = _function_closure((nodes[n] for n in restore_nodes), library)

  def the_savers_own(op: str, in_save: bool, in_restore: bool, in_other: bool) -> bool:
    if in_other:
      return False
    if in_restore:  # runs at every load
      return op in _RESTORE_OPS
    return in_save and op in _SAVE_OPS

  findings = []
  for name, node in nodes.items():
    if node.op in DENIED_OPS and not the_savers_own(
      node.op, name in save_nodes, name in restore_nodes, name in other_nodes
    ):
      findings.append(Finding(node.op, f"node {name}"))
  for name, function in library.items():
    in_save, in_restore = name in save_functions, name in restore_functions
    in_other = name in other_functions or not (in_save or in_restore)
    for node in function.node_def:
      if node.op in DENIED_OPS and not the_savers_own(node.op, in_save, in_restore, in_other):
        findings.append(Finding(node.op, f"function {name}"))
  return findings


def denied_ops(saved_model_dir: str) -> list[Finding]:
  """The denied ops in the SavedModel in `saved_model_dir`, each once per place, in graph
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


def check_saved_model(saved_model_dir: str, *, trust: bool = False) -> None:
  """Raises UnsafeModelError when the SavedModel holds denied ops, unless `trust`;
  DamagedExportError when its `saved_model.pb` is missing or does not parse."""
  if trust:
    return
  identity = _identity(saved_model_dir)
  if identity is not None and identity in _found_safe:
    return
  first: dict[str, Finding] = {}
  for finding in denied_ops(saved_model_dir):
    first.setdefault(finding.op, finding)  # where each op is first (a function has copies)
  if first:
    shown = ", ".join(map(str, list(first.values())[:3]))
    more = f" and {len(first) - 3} more ops" if len(first) > 3 else ""
    raise UnsafeModelError(
      f"model refused: its graph holds ops that touch files, the network "
      f"or processes ({shown}{more}); pass --trust-model if you trust it"
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
      f"model damaged: {index} cannot be read: {_one_line(error)}"
    ) from error
  for name in sorted(reader.get_variable_to_dtype_map()):
    try:
      reader.get_tensor(name)
    except Exception as error:  # truncated, corrupt, ...
      where = data[0] if len(data) == 1 else f"{prefix}.data-*"
      raise DamagedExportError(
        f"model damaged: {where}: checkpoint entry {name} cannot be read: {_one_line(error)}"
      ) from error


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text[:300] + ("..." if len(text) > 300 else "")
