"""`op_allowlist`: every op TensorFlow registers is reviewed, and no allowed op names a file."""

import re

import pytest
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session

from segbeam.model import op_allowlist


def _registered() -> dict[str, op_def_pb2.OpDef]:
  """Every op this process's TensorFlow registers, with what a worker imports loaded."""
  import tfx_bsl.public.beam.run_inference  # noqa: F401  # registers any ops of its own

  ops = op_def_pb2.OpList()
  ops.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
  return {op.name: op for op in ops.op}


REGISTERED = _registered()


def test_every_op_tensorflow_registers_is_reviewed():
  """A TensorFlow with new ops fails here until each is put in a list: refused meanwhile."""
  unreviewed = sorted(name for name in REGISTERED if not op_allowlist.reviewed(name))
  assert unreviewed == [], (
    "ops in no list of segbeam/model/op_allowlist.py: add each to ALLOWED_OPS after reading "
    f"what it does, or to the refused ones: {unreviewed}"
  )


def test_every_listed_op_is_one_tensorflow_registers():
  listed = op_allowlist.ALLOWED | op_allowlist.CHECKPOINT_OPS | op_allowlist._REFUSED_OTHERS
  assert sorted(listed - REGISTERED.keys()) == []


def test_an_op_tensorflow_does_not_have_is_refused_as_unreviewed():
  assert op_allowlist.refusal_reason("WriteFileV9") == "reads, writes or names files"
  assert op_allowlist.refusal_reason("FrobnicateTensor") == op_allowlist.UNREVIEWED


@pytest.mark.parametrize(
  "op",
  [
    "ReadFile",
    "WriteFile",
    "MatchingFiles",
    "PyFunc",
    "EagerPyFunc",
    "PrintV2",
    "Print",
    "Skipgram",
    "FixedUnigramCandidateSampler",
    "DatasetFromGraph",
    "InitializeTableFromTextFileV2",
    "TFRecordDatasetV2",
    "DataServiceDatasetV4",
    "WriteSummary",
    "DebugIdentityV3",
    "RpcCall",
    "CollectiveReduceV3",
    "_Send",
    "XlaCallModule",
    "ImmutableConst",
    "LoadAndRemapMatrix",
    "DecodeProtoV2",
  ],
)
def test_ops_that_reach_outside_the_model_are_refused(op):
  assert op in REGISTERED
  assert op_allowlist.refusal_reason(op) not in (None, op_allowlist.UNREVIEWED)


_OUTSIDE = {
  "reads, writes or names files",
  "tf.data, which reads its own inputs from files or the network",
  "the network, other tasks or devices, or a program carried in an attribute",
  "debugging or printing, to files, URLs or the log",
  op_allowlist.refusal_reason("RestoreV2"),
}


def test_every_op_taking_a_file_or_an_address_is_refused_for_it():
  """So that a refusal says what such an op would do."""
  names_a_file = re.compile(
    r"file|(?<!top_)path|(^|_)dir($|_)|director|url|address|graph_def", re.IGNORECASE
  )
  wrong = {
    name: op_allowlist.refusal_reason(name)
    for name, op in REGISTERED.items()
    if any(names_a_file.search(arg.name) for arg in [*op.input_arg, *op.attr])
    and op_allowlist.refusal_reason(name) not in _OUTSIDE
  }
  assert wrong == {}


# Path-like names among an op's inputs and attributes.
_PATH_LIKE = re.compile(r"file|path|dir|url|vocab|graph|prefix|stream|address|host|port", re.I)


def test_no_allowed_op_takes_a_path_a_graph_or_an_address():
  takes = {
    name: [a.name for a in [*REGISTERED[name].input_arg, *REGISTERED[name].attr]]
    for name in op_allowlist.ALLOWED
  }
  assert {
    name: [a for a in args if _PATH_LIKE.search(a)]
    for name, args in takes.items()
    if any(_PATH_LIKE.search(a) for a in args)
  } == {}
  # The checkpoint ops do, which is why they are allowed only in the saver (model_safety).
  assert all(
    any(_PATH_LIKE.search(a.name) for a in REGISTERED[name].input_arg)
    for name in op_allowlist.CHECKPOINT_OPS
  )


# Every string attribute an allowed op has, each read for what it does: formats, modes,
# messages, names of loop frames and variables in this process, a call's configuration (which
# model_safety checks field by field).
_REVIEWED_STRING_ATTRS = {
  "padding",
  "data_format",
  "message",
  "method",
  "src_format",
  "dst_format",
  "dct_method",
  "equation",
  "frame_name",
  "mode",
  "bad_indices_policy",
  "interpolation",
  "fill_mode",
  "config",
  "config_proto",
  "executor_type",
  "kernel_type",
  "pattern",
  "separator",
  "unit",
  "tensor_array_name",
  "container",
  "shared_name",
  "debug_name",
  "allowed_devices",
}


def test_the_string_attributes_of_allowed_ops_are_all_reviewed():
  found = {
    attr.name
    for name in op_allowlist.ALLOWED
    for attr in REGISTERED[name].attr
    if attr.type in ("string", "list(string)")
  }
  assert sorted(found - _REVIEWED_STRING_ATTRS) == []


def test_function_valued_attributes_belong_to_control_flow_alone():
  """A function attribute runs a graph: allowed only on calls and control flow, whose named
  functions model_safety checks like the rest."""
  with_functions = {
    name
    for name in op_allowlist.ALLOWED
    for attr in REGISTERED[name].attr
    if attr.type in ("func", "list(func)")
  }
  assert with_functions <= op_allowlist.ALLOWED_OPS["function calls and control flow"]
