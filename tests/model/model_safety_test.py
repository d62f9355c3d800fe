"""`model_safety`: the op check on real exports (the embedded model, one whose serving function
writes a file, a TF1 SavedModel, graphs edited to misuse the saver's ops, to hold refused ops
or to call them by name) and the damage check."""

import os
import re
import shutil
import time

import pytest

from segbeam.model import defaults
from segbeam.model import model_safety
from tests import unsafe_exports


@pytest.fixture(scope="module")
def writing_export(tmp_path_factory):
  """(export_dir, the file its serving function writes when called)."""
  root = tmp_path_factory.mktemp("writing_export")
  written = str(root / "written.txt")
  return unsafe_exports.write_export(str(root / "export"), writes_to=written), written


@pytest.fixture(scope="module")
def harmless_export(tmp_path_factory):
  return unsafe_exports.write_export(str(tmp_path_factory.mktemp("harmless") / "export"))


def _ops(saved_model):
  graph = saved_model.meta_graphs[0].graph_def
  return {node.op for node in graph.node} | {
    node.op for f in graph.library.function for node in f.node_def
  }


def test_the_embedded_default_model_passes_both_checks_quickly():
  model_dir = defaults.default_model_dir()
  saved_model = model_safety.read_saved_model(model_dir)
  # Its checkpoint functions hold the saver's ops: they must not make it refused.
  assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= _ops(saved_model)
  started = time.perf_counter()
  assert model_safety.denied_ops(model_dir) == []
  model_safety.check_saved_model(model_dir)
  model_safety.check_export_readable(model_dir)  # reads every variable, 26 MB
  assert time.perf_counter() - started < 1.0


def test_an_export_whose_serving_function_writes_a_file_is_refused(writing_export):
  export_dir, written = writing_export
  findings = model_safety.denied_ops(export_dir)
  assert {f.op for f in findings} == {"WriteFile"}
  assert all(re.fullmatch(r"function __inference_serve_\d+", f.where) for f in findings)
  with pytest.raises(model_safety.UnsafeModelError) as refused:
    model_safety.check_saved_model(export_dir)
  assert isinstance(refused.value, ValueError)
  assert str(refused.value) == (
    "model refused: its graph holds ops segbeam does not run in a model "
    f"(WriteFile in {findings[0].where} (reads, writes or names files)); "
    "pass --trust-model if you trust it"
  )
  model_safety.check_saved_model(export_dir, trust=True)  # trusted: no refusal
  model_safety.check_export_readable(export_dir)  # and it is whole
  assert not os.path.exists(written)  # the checks read the proto, they load nothing


def test_the_refused_export_really_writes_its_file_when_run(writing_export, tmp_path):
  """What the check stands between: loading and calling it writes the file."""
  import tensorflow as tf

  from segbeam.pipeline import sessions

  export_dir = str(tmp_path / "export")
  shutil.copytree(writing_export[0], export_dir)
  written = writing_export[1]
  loaded = tf.saved_model.load(export_dir)
  assert not os.path.exists(written)
  loaded.signatures["serving_default"](images=tf.constant([sessions.warm_up_image(16)]))
  with open(written, "rb") as f:
    assert f.read() == unsafe_exports.WRITTEN
  os.remove(written)


def test_a_harmless_export_written_the_same_way_passes(harmless_export):
  assert {"SaveV2", "RestoreV2"} <= _ops(model_safety.read_saved_model(harmless_export))
  assert model_safety.denied_ops(harmless_export) == []


def test_an_export_found_safe_is_checked_again_once_its_graph_changes(
  harmless_export, writing_export, tmp_path
):
  """The process remembers an export found safe (a local run checks it from three places),
  by its graph file's size and modification time: an edited graph is read again."""
  export_dir = str(tmp_path / "export")
  shutil.copytree(harmless_export, export_dir)
  model_safety.check_saved_model(export_dir)
  model_safety.check_saved_model(export_dir)  # remembered
  graph_file = os.path.join(export_dir, model_safety.SAVED_MODEL_FILE)
  shutil.copyfile(os.path.join(writing_export[0], model_safety.SAVED_MODEL_FILE), graph_file)
  os.utime(graph_file, ns=(time.time_ns(), time.time_ns()))
  with pytest.raises(model_safety.UnsafeModelError, match="WriteFile"):
    model_safety.check_saved_model(export_dir)


def _edited_default_model(tmp_path, edit):
  """A copy of the default model's saved_model.pb changed by `edit(meta_graph, functions)`."""
  saved_model = model_safety.read_saved_model(defaults.default_model_dir())
  meta_graph = saved_model.meta_graphs[0]
  functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
  edit(meta_graph, functions)
  (tmp_path / model_safety.SAVED_MODEL_FILE).write_bytes(saved_model.SerializeToString())
  return str(tmp_path)


def _saver_functions(meta_graph):
  nodes = {node.name: node for node in meta_graph.graph_def.node}
  saver = meta_graph.saver_def
  return (
    nodes[saver.save_tensor_name.split(":")[0]].attr["f"].func.name,
    nodes[saver.restore_op_name].attr["f"].func.name,
  )


def _serve_function(functions):
  return next(f for name, f in functions.items() if name.startswith("__inference_serve_"))


def test_the_save_function_called_from_serving_is_refused(tmp_path):
  names = {}

  def call_save(meta_graph, functions):
    names["save"], _ = _saver_functions(meta_graph)
    call = _serve_function(functions).node_def.add(name="save_now", op="StatefulPartitionedCall")
    call.attr["f"].func.name = names["save"]

  model_dir = _edited_default_model(tmp_path, call_save)
  assert [(f.op, f.where) for f in model_safety.denied_ops(model_dir)] == [
    ("SaveV2", f"function {names['save']}"),
    ("MergeV2Checkpoints", f"function {names['save']}"),
  ]


def test_a_write_in_the_restore_function_is_refused(tmp_path):
  """The restore function runs at every load: it is exempt for RestoreV2 alone."""
  names = {}

  def write_on_restore(meta_graph, functions):
    _, names["restore"] = _saver_functions(meta_graph)
    functions[names["restore"]].node_def.add(name="exfiltrate", op="WriteFile")

  model_dir = _edited_default_model(tmp_path, write_on_restore)
  assert [(f.op, f.where) for f in model_safety.denied_ops(model_dir)] == [
    ("WriteFile", f"function {names['restore']}")
  ]


def test_saver_ops_outside_the_saver_are_refused(tmp_path):
  def restore_elsewhere(meta_graph, functions):
    meta_graph.graph_def.node.add(name="read_some_checkpoint", op="RestoreV2")
    _serve_function(functions).node_def.add(name="write_some_checkpoint", op="SaveV2")

  model_dir = _edited_default_model(tmp_path, restore_elsewhere)
  findings = [(f.op, f.where) for f in model_safety.denied_ops(model_dir)]
  assert findings[0] == ("RestoreV2", "node read_some_checkpoint")
  assert findings[1][0] == "SaveV2" and findings[1][1].startswith("function __inference_serve_")


def _signature_output_node(meta_graph) -> str:
  return meta_graph.signature_def["serving_default"].outputs["probabilities"].name.split(":")[0]


def test_a_saver_whose_save_tensor_is_the_serving_output_gets_no_exemption(tmp_path):
  """The saver named as the serving output: SaveV2 would run on every batch."""
  names = {}

  def save_on_every_batch(meta_graph, functions):
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    save_call = meta_graph.saver_def.save_tensor_name.split(":")[0]
    names["save"], _ = _saver_functions(meta_graph)
    serving = _signature_output_node(meta_graph)
    nodes[serving].input.append("^" + save_call)
    meta_graph.saver_def.save_tensor_name = serving + ":0"

  model_dir = _edited_default_model(tmp_path, save_on_every_batch)
  findings = [(f.op, f.where) for f in model_safety.denied_ops(model_dir)]
  assert ("SaveV2", f"function {names['save']}") in findings


def _restore_function(meta_graph, functions):
  return functions[_saver_functions(meta_graph)[1]]


@pytest.mark.parametrize("prefix", ["constant", "joined", "argument of another call"])
def test_a_restore_from_anything_but_the_savers_filename_is_refused(prefix, tmp_path):
  """RestoreV2 runs at every load: it may read only what the loader feeds the saver's filename
  with, the export's own variables."""
  names = {}

  def read_elsewhere(meta_graph, functions):
    restore = _restore_function(meta_graph, functions)
    names["restore"] = restore.signature.name
    original = next(node for node in restore.node_def if node.op == "RestoreV2")
    if prefix == "constant":
      where = restore.node_def.add(name="elsewhere", op="Const")
      where.attr["dtype"].type = 7  # DT_STRING
      where.attr["value"].tensor.dtype = 7
      where.attr["value"].tensor.string_val.append(b"/some/other/checkpoint/variables")
      source = "elsewhere:output:0"
    elif prefix == "joined":
      join = restore.node_def.add(name="climb", op="StringJoin")
      join.input.extend(["file_prefix", "RestoreV2/tensor_names:output:0"])
      join.attr["N"].i = 2
      source = "climb:output:0"
    else:  # the restore function called a second time, from the serving function, with a path
      call = _serve_function(functions).node_def.add(name="restore_again", op="PartitionedCall")
      call.attr["f"].func.name = names["restore"]
      source = "file_prefix"
    stolen = restore.node_def.add(name="stolen", op="RestoreV2")
    stolen.input.extend([source, *original.input[1:]])
    stolen.attr["dtypes"].CopyFrom(original.attr["dtypes"])

  model_dir = _edited_default_model(tmp_path, read_elsewhere)
  findings = model_safety.denied_ops(model_dir)
  assert ("RestoreV2", f"function {names['restore']}") in [(f.op, f.where) for f in findings]
  with pytest.raises(model_safety.UnsafeModelError, match="RestoreV2 in function"):
    model_safety.check_saved_model(model_dir)


@pytest.mark.parametrize("fed", ["fn:1", "fn:0"])
def test_a_restore_from_another_output_of_the_filename_node_is_refused(fed, tmp_path):
  """The loader feeds the saver's filename tensor, not its node: with the filename one output
  of a two-output node whose other output is a path elsewhere, RestoreV2 read that path (found
  by red-teaming the allowlist). A filename node that computes anything is refused too."""

  def read_the_other_output(meta_graph, functions):
    graph = meta_graph.graph_def
    elsewhere = graph.node.add(name="elsewhere", op="Const")
    elsewhere.attr["dtype"].type = 7  # DT_STRING
    elsewhere.attr["value"].tensor.dtype = 7
    elsewhere.attr["value"].tensor.string_val.append(b"/some/other/checkpoint/variables")
    both = graph.node.add(name="fn", op="IdentityN", input=["elsewhere", "saver_filename"])
    both.attr["T"].list.type.extend([7, 7])
    for node in graph.node:
      if node.name == meta_graph.saver_def.restore_op_name:
        node.input[0] = "fn:0"
    meta_graph.saver_def.filename_tensor_name = fed

  findings = model_safety.denied_ops(_edited_default_model(tmp_path, read_the_other_output))
  assert [f.op for f in findings] == ["RestoreV2"]
  assert findings[0].where.startswith("function __inference__traced_restore_")


@pytest.mark.parametrize(
  "op, why",
  [
    ("DatasetFromGraph", "tf.data"),  # runs a GraphDef held in a string
    ("Skipgram", "files"),  # reads any text file
    ("Print", "printing"),  # the old print op
    ("FixedUnigramCandidateSampler", "files"),  # opens its vocab_file
    ("XlaCallModule", "a program carried in an attribute"),
    ("ReadFile", "files"),
    ("NoSuchOpInAnyTensorFlow", "not reviewed"),
  ],
)
def test_an_op_outside_the_allowlist_is_refused_wherever_it_is(op, why, tmp_path):
  """In the serving function, in a function nothing calls, in the top-level graph."""

  def add_everywhere(meta_graph, functions):
    _serve_function(functions).node_def.add(name="in_serving", op=op)
    unused = meta_graph.graph_def.library.function.add()
    unused.signature.name = "never_called"
    unused.node_def.add(name="in_unused", op=op)
    meta_graph.graph_def.node.add(name="at_top", op=op)

  model_dir = _edited_default_model(tmp_path, add_everywhere)
  findings = model_safety.denied_ops(model_dir)
  wheres = [f.where for f in findings if f.op == op]
  assert wheres[0] == "node at_top"
  assert wheres[1].startswith("function __inference_serve_") and "function never_called" in wheres
  assert all(why in f.why for f in findings)
  with pytest.raises(model_safety.UnsafeModelError, match=f"{op} in node at_top"):
    model_safety.check_saved_model(model_dir)


def test_an_op_called_by_name_as_a_function_is_checked_as_an_op(tmp_path):
  """A call whose function is no library function runs the op of that name."""

  def call_write_file(meta_graph, functions):
    call = _serve_function(functions).node_def.add(name="by_name", op="StatefulPartitionedCall")
    call.attr["f"].func.name = "WriteFile"

  model_dir = _edited_default_model(tmp_path, call_write_file)
  findings = model_safety.denied_ops(model_dir)
  assert [(f.op, f.why) for f in findings] == [
    ("WriteFile", "called from StatefulPartitionedCall: reads, writes or names files")
  ]


def test_an_op_named_through_a_functions_attributes_is_checked_as_an_op(tmp_path):
  """A function's attribute placeholders are filled from its caller's attributes: an op named
  there, however deep, is what the inner call runs."""

  def call_through_a_placeholder(meta_graph, functions):
    trampoline = meta_graph.graph_def.library.function.add()
    trampoline.signature.name = "trampoline"
    trampoline.signature.attr.add(name="target", type="func")
    inner = trampoline.node_def.add(name="inner", op="PartitionedCall")
    inner.attr["f"].placeholder = "target"
    call = _serve_function(functions).node_def.add(name="outer", op="PartitionedCall")
    call.attr["f"].func.name = "trampoline"
    call.attr["f"].func.attr["target"].func.name = "WriteFile"

  model_dir = _edited_default_model(tmp_path, call_through_a_placeholder)
  findings = model_safety.denied_ops(model_dir)
  assert [f.op for f in findings] == ["WriteFile"]
  assert findings[0].where.startswith("function __inference_serve_")


def test_a_constant_holding_a_variant_is_refused(tmp_path):
  def add_variant(meta_graph, functions):
    const = _serve_function(functions).node_def.add(name="opaque", op="Const")
    const.attr["dtype"].type = 21  # DT_VARIANT
    const.attr["value"].tensor.dtype = 21

  findings = model_safety.denied_ops(_edited_default_model(tmp_path, add_variant))
  assert [(f.op, f.why) for f in findings] == [
    ("Const", "a constant holding a variant or a resource")
  ]


def test_a_call_configured_beyond_its_devices_is_refused(tmp_path):
  from tensorflow.core.protobuf import config_pb2

  def configure(meta_graph, functions):
    call = next(
      node for f in functions.values() for node in f.node_def if "config_proto" in node.attr
    )
    config = config_pb2.ConfigProto()
    config.ParseFromString(call.attr["config_proto"].s)
    config.cluster_def.job.add(name="worker").tasks[0] = "attacker.example:2222"
    config.experimental.collective_group_leader = "/job:worker/replica:0/task:0"
    call.attr["config_proto"].s = config.SerializeToString()

  model_dir = _edited_default_model(tmp_path, configure)
  findings = model_safety.denied_ops(model_dir)
  assert len(findings) == 1
  assert (
    findings[0].why == "its config_proto sets cluster_def, experimental.collective_group_leader"
  )


def test_an_edit_within_the_allowlist_passes(tmp_path):
  """The check refuses what is outside the list, not any edit."""

  def add_relu(meta_graph, functions):
    relu = _serve_function(functions).node_def.add(name="extra_relu", op="Relu")
    relu.input.append("images")

  assert model_safety.denied_ops(_edited_default_model(tmp_path, add_relu)) == []


def test_variables_linked_from_outside_the_export_are_refused(harmless_export, tmp_path):
  """The loader restores variables/ from wherever its links point."""
  elsewhere = tmp_path / "elsewhere"
  shutil.copytree(os.path.join(harmless_export, "variables"), elsewhere)
  export_dir = tmp_path / "export"
  shutil.copytree(harmless_export, export_dir)
  shutil.rmtree(export_dir / "variables")
  (export_dir / "variables").symlink_to(elsewhere)
  with pytest.raises(model_safety.UnsafeModelError) as refused:
    model_safety.check_saved_model(str(export_dir))
  assert str(refused.value) == (
    f"model refused: {export_dir} holds links leading out of it (variables -> {elsewhere}); "
    "copy the files in, or pass --trust-model if you trust it"
  )
  model_safety.check_saved_model(str(export_dir), trust=True)
  # A link inside the export, or the export folder itself reached through a link, is fine.
  inside = tmp_path / "inside"
  shutil.copytree(harmless_export, inside)
  (inside / "variables_again").symlink_to(inside / "variables")
  (tmp_path / "linked_export").symlink_to(inside)
  model_safety.check_saved_model(str(tmp_path / "linked_export"))


def _tf1_saved_model(export_dir):
  import tensorflow as tf

  graph = tf.Graph()
  with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
    y = tf.matmul(x, tf.compat.v1.get_variable("w", [2, 2]), name="y")
    session.run(tf.compat.v1.global_variables_initializer())
    builder = tf.compat.v1.saved_model.Builder(export_dir)
    builder.add_meta_graph_and_variables(
      session,
      ["serve"],
      signature_def_map={
        "serving_default": tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
      },
    )
    builder.save()
  return export_dir


def test_a_tf1_saver_in_the_graph_itself_is_the_savers_own(tmp_path):
  export_dir = _tf1_saved_model(str(tmp_path / "tf1"))
  saved_model = model_safety.read_saved_model(export_dir)
  nodes = {node.name: node.op for node in saved_model.meta_graphs[0].graph_def.node}
  assert nodes["save/SaveV2"] == "SaveV2" and nodes["save/RestoreV2"] == "RestoreV2"
  assert model_safety.denied_ops(export_dir) == []
  model_safety.check_export_readable(export_dir)

  # The signature's output made to save first: the save op is no longer the saver's alone.
  for node in saved_model.meta_graphs[0].graph_def.node:
    if node.name == "y":
      node.input.append("^save/SaveV2")
  with open(os.path.join(export_dir, model_safety.SAVED_MODEL_FILE), "wb") as f:
    f.write(saved_model.SerializeToString())
  assert [(f.op, f.where) for f in model_safety.denied_ops(export_dir)] == [
    ("SaveV2", "node save/SaveV2")
  ]


def _damage(export_dir, how):
  data = os.path.join(export_dir, "variables", "variables.data-00000-of-00001")
  index = os.path.join(export_dir, "variables", "variables.index")
  saved_model = os.path.join(export_dir, model_safety.SAVED_MODEL_FILE)
  if how == "truncated_variables":
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
    return data, "cannot be read: "
  if how == "missing_variables":
    os.remove(data)
    return data, "is missing"
  if how == "missing_index":
    os.remove(index)
    return index, "is missing"
  if how == "missing_saved_model":
    os.remove(saved_model)
    return saved_model, "is missing"
  with open(saved_model, "wb") as f:  # not a proto
    f.write(b"\xff" * 64)
  return saved_model, "is not a SavedModel"


@pytest.mark.parametrize(
  "how",
  [
    "truncated_variables",
    "missing_variables",
    "missing_index",
    "missing_saved_model",
    "garbled_saved_model",
  ],
)
def test_a_damaged_export_is_refused_naming_the_file(how, harmless_export, tmp_path):
  export_dir = str(tmp_path / "export")
  shutil.copytree(harmless_export, export_dir)
  path, words = _damage(export_dir, how)
  with pytest.raises(model_safety.DamagedExportError) as refused:
    model_safety.check_export_readable(export_dir)
  message = str(refused.value)
  assert message.startswith(f"model damaged: {path}") and words in message
  assert len(message.splitlines()) == 1


def test_a_truncated_default_model_is_refused_at_the_read(tmp_path):
  """The file a user truncates by hand: TensorFlow's own words for it, after the file name."""
  export_dir = str(tmp_path / "default_model")
  shutil.copytree(defaults.default_model_dir(), export_dir)
  data = os.path.join(export_dir, "variables", "variables.data-00000-of-00001")
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) - 1000)
  with pytest.raises(
    model_safety.DamagedExportError, match=re.escape(f"model damaged: {data}: checkpoint entry ")
  ) as refused:
    model_safety.check_export_readable(export_dir)
  assert "Read less bytes than requested" in str(refused.value)
