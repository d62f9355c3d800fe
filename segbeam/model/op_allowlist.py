"""Which TensorFlow ops a model may hold: an allowlist, and why every other op is refused.

A model file is code. segbeam runs one whose graph only computes on its inputs and its own
variables: the ops in `ALLOWED_OPS`, taken from what the default model, the presets and every
model the conversion tests export use, widened by hand to the ops such networks are built from
(another activation, pooling, resize, a TF1 graph's control flow). Each was read for what it
does outside the process's memory: none reads or writes a file, reaches the network, starts a
process, calls into Python, or carries a graph or a path in an attribute. Every other op is
refused, including ops a later TensorFlow adds, which are in no list here until someone reviews
them (tests/model/op_allowlist_test.py names each unreviewed one).

`CHECKPOINT_OPS` are allowed only inside the saver's restore and save steps of the export's own
checkpoint; `model_safety` decides where they are. The rest is documented, so that a refusal can
say why: `refusal_reason` gives the reason of its category (`_REFUSED_BY_NAME`, `_REFUSED_OTHERS`).

Light: imports nothing but the standard library.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence


def _names(text: str) -> frozenset[str]:
  return frozenset(text.split())


def _any_of(text: str) -> re.Pattern:
  """A pattern for an op name that holds any of the words (regular expressions) of `text`."""
  return re.compile("|".join(text.split()))


ALLOWED_OPS: Mapping[str, frozenset[str]] = {
  "graph plumbing": _names(
    """
    Assert CheckNumerics CheckNumericsV2 Const EnsureShape GuaranteeConst Identity IdentityN
    NoOp Placeholder PlaceholderWithDefault PreventGradient Snapshot StopGradient
    """
  ),
  "function calls and control flow": _names(
    """
    Case ControlTrigger Enter Exit If LoopCond Merge NextIteration PartitionedCall RefEnter
    RefExit RefIdentity RefMerge RefNextIteration RefSwitch StatefulPartitionedCall
    StatelessCase StatelessIf StatelessWhile Switch While
    """
  ),
  "tensor lists and arrays (map_fn and loops)": _names(
    """
    EmptyTensorList TensorArrayCloseV3 TensorArrayConcatV3 TensorArrayGatherV3
    TensorArrayReadV3 TensorArrayScatterV3 TensorArraySizeV3 TensorArraySplitV3
    TensorArrayV3 TensorArrayWriteV3 TensorListConcatV2 TensorListElementShape
    TensorListFromTensor TensorListGather TensorListGetItem TensorListLength
    TensorListPopBack TensorListPushBack TensorListReserve TensorListResize
    TensorListScatter TensorListScatterIntoExistingList TensorListScatterV2
    TensorListSetItem TensorListSplit TensorListStack
    """
  ),
  "the model's own variables": _names(
    """
    Assign AssignVariableOp DisableCopyOnRead IsVariableInitialized ReadVariableOp
    ResourceGather VarHandleOp VarIsInitializedOp VariableShape VariableV2
    """
  ),
  "shapes, indexing and layout": _names(
    """
    BatchToSpaceND Bitcast BroadcastArgs BroadcastTo Cast ClipByValue Concat ConcatOffset
    ConcatV2 Cumprod Cumsum DataFormatDimMap DataFormatVecPermute DepthToSpace ExpandDims
    Fill Gather GatherNd GatherV2 InvertPermutation LinSpace MirrorPad OneHot OnesLike Pack
    Pad PadV2 Range Rank Reshape ReverseV2 Roll ScatterNd Select SelectV2 Shape ShapeN Size
    Slice SpaceToBatchND SpaceToDepth Split SplitV Squeeze StridedSlice TensorScatterAdd
    TensorScatterUpdate Tile TopKV2 Transpose Unpack Where ZerosLike
    """
  ),
  "arithmetic and reductions": _names(
    """
    Abs Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Atan Atan2 BatchMatMul
    BatchMatMulV2 BatchMatMulV3 BitwiseAnd BitwiseOr BitwiseXor Ceil Cos Div DivNoNan Einsum
    Equal Erf Erfc EuclideanNorm Exp Expm1 Floor FloorDiv FloorMod Greater GreaterEqual
    Invert IsFinite IsInf IsNan LeftShift Less LessEqual Log Log1p LogicalAnd LogicalNot
    LogicalOr MatMul Max Maximum Mean Min Minimum Mod Mul MulNoNan Neg NotEqual Pow Prod
    RealDiv Reciprocal RightShift Rint Round Rsqrt Sigmoid Sign Sin Sqrt Square
    SquaredDifference Sub Sum Tan Tanh TruncateDiv TruncateMod Xdivy Xlogy
    """
  ),
  "network layers": _names(
    """
    AvgPool AvgPool3D BatchNormWithGlobalNormalization BiasAdd BiasAddV1 Conv2D
    Conv2DBackpropInput Conv3D Conv3DBackpropInputV2 DepthwiseConv2dNative Dilation2D Elu
    FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel
    FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D
    LRN LeakyRelu LogSoftmax MaxPool MaxPool3D MaxPoolV2 Relu Relu6 Selu Softmax Softplus
    Softsign
    """
  ),
  "image decoding and resizing": _names(
    """
    AdjustContrastv2 AdjustHue AdjustSaturation CropAndResize DecodeAndCropJpeg DecodeBmp
    DecodeGif DecodeImage DecodeJpeg DecodePng ExtractImagePatches ExtractJpegShape HSVToRGB
    ImageProjectiveTransformV2 ImageProjectiveTransformV3 RGBToHSV ResizeArea ResizeBicubic
    ResizeBilinear ResizeNearestNeighbor ScaleAndTranslate
    """
  ),
  "random numbers (initialisers and dropout branches that exports carry)": _names(
    """
    RandomStandardNormal RandomUniform RandomUniformInt StatelessRandomGetAlg
    StatelessRandomGetKeyCounter StatelessRandomGetKeyCounterAlg StatelessRandomNormal
    StatelessRandomNormalV2 StatelessRandomUniform StatelessRandomUniformV2
    StatelessTruncatedNormal StatelessTruncatedNormalV2 TruncatedNormal
    """
  ),
  "strings: signature plumbing and checkpoint names": _names(
    """
    ShardedFilename ShardedFilespec StaticRegexFullMatch StringJoin StringLength Substr
    """
  ),
}

# Refused, by what their names hold (the first that matches gives the reason).
_REFUSED_BY_NAME: Sequence[tuple[str, re.Pattern]] = (
  ("TensorFlow's internal ops, made by its own graph rewrites, never saved", _any_of("^_")),
  ("runs Python that the loading process registered", _any_of("PyFunc")),
  (
    "reads, writes or names files",
    _any_of(
      "File Reader Checkpoint Snapshot TFRecord Save Restore Summary Event Vocab Sql LMDB CSV "
      "Record ImmutableConst Remapping RemapMatrix Proto Calibration ^Skipgram$ "
      "^FixedUnigramCandidateSampler$"
    ),
  ),
  (
    "tf.data, which reads its own inputs from files or the network",
    _any_of("Dataset Iterator ^Optional DataService Window Autotune ^Model"),
  ),
  (
    "the network, other tasks or devices, or a program carried in an attribute",
    _any_of(
      "Collective Rpc Send Recv TPU Tpu Nccl DTensor Xla Host Infeed Outfeed Remote "
      "Coordination Grpc Mpi Embedding Device Mesh"
    ),
  ),
  (
    "debugging or printing, to files, URLs or the log",
    _any_of("Debug Print Dump Audit ^Copy Trace Stats"),
  ),
  (
    "training: gradients and optimizer updates",
    _any_of(
      "^(Resource)?(Sparse)?Apply Grad Backprop Gradient Accumulator Optimizer Loss "
      "XentWithLogits CTC ^Assign(Add|Sub) Scatter(Add|Sub|Mul|Div|Min|Max|Update) "
      "ScatterNd(Add|Sub|Update|Min|Max|NonAliasingAdd)"
    ),
  ),
  (
    "other random number generators and samplers",
    _any_of("Random Multinomial Sampler Shuffle Seed Rng Categorical Poisson Gamma$ Binomial"),
  ),
  (
    "text processing and parsing",
    _any_of(
      "String Regex Unicode Base64 Substr Parse Serialize "
      "Decode(Csv|Raw|Compressed|Wav|Json|Padded) Encode Tokeniz Fingerprint AsString Skipgram "
      "Ngram Word"
    ),
  ),
  (
    "lookup tables, queues and staging areas",
    _any_of(
      "Table Lookup Map(Stage|Unstage|Peek|Size|Clear|Incomplete) Stage Queue Barrier "
      "Tensor(Forest|Summary) Heap"
    ),
  ),
  ("sparse and ragged tensors", _any_of("Sparse Ragged CSR")),
  ("quantized kernels", _any_of("Quantiz Requantiz Dequantiz ^Quantized")),
  (
    "linear algebra and signal processing",
    _any_of("Matrix Cholesky ^Qr Svd Eig ^Lu Fft FFT Tridiagonal Banded Lstsq Determinant"),
  ),
  ("audio and video", _any_of("Audio Wav Mfcc Spectrogram Video")),
  ("boosted trees", _any_of("BoostedTrees Tree")),
  ("other resources, mutexes and locks", _any_of("Mutex Critical Semaphore Lock Resource")),
)

# Registered ops no pattern above names, each looked at once: none is needed to segment an
# image (other math, test ops, deprecated versions, session handles, ...).
_REFUSED_OTHERS = _names(
  """
  A Abort AccumulateNV2 Acos Acosh AdjustContrast AllToAll Angle AnonymousMemoryCache
  ApproxTopK Asin Asinh Atanh Attr AttrBool AttrBoolList AttrDefault AttrEmptyListDefault
  AttrEnum AttrEnumList AttrFloat AttrListDefault AttrListMin AttrListTypeDefault AttrMin
  AttrPartialShape AttrPartialShapeList AttrShape AttrShapeList AttrTypeDefault B Batch
  BatchFunction BatchToSpace BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1
  BesselK0 BesselK0e BesselK1 BesselK1e BesselY0 BesselY1 Betainc Binary Bincount BlockLSTM
  BlockLSTMV2 Bucketize CheckPinned CombinedNonMaxSuppression Complex ComplexAbs
  ComplexStruct CompositeTensorVariantFromComponents CompositeTensorVariantToComponents
  CompressElement ComputeAccidentalHits ComputeBatchSize ComputeDedupDataSize
  ComputeDedupDataSizeV2 ComputeDedupDataTupleMask ComputeDedupDataTupleMaskV2 Conj
  ConjugateTranspose ConstructionFails Conv ConvertToCooTensor Cosh CountUpTo Cross
  CrossReplicaSum CudnnRNN CudnnRNNCanonicalToParams CudnnRNNCanonicalToParamsV2
  CudnnRNNParamsSize CudnnRNNParamsToCanonical CudnnRNNParamsToCanonicalV2 CudnnRNNV2
  CudnnRNNV3 CumulativeLogsumexp CustomAggregator Dawsn DecodeJSONExample DecodeJxl
  DecodeWebP DeepCopy DefaultAttrs DeleteMemoryCache DeleteSessionTensor DenseBincount
  DenseToDenseSetOperation DestroyTemporaryVariable Diag DiagPart Digamma DrawBoundingBoxes
  DrawBoundingBoxesV2 DtypeWithDefaultOp DummyIterationCounter DummyMemoryCache
  DynamicPartition DynamicStitch EditDistance Empty EmptyTensorMap Erfinv
  ExperimentalThreadPoolHandle Expint ExtractGlimpse ExtractGlimpseV2 ExtractVolumePatches
  Fact FakeParam FiveFloatOutputs FloatInput FloatOutput Foo1 Foo2 Foo3 For
  FractionalAvgPool FractionalMaxPool FresnelCos FresnelSin FuncAttr FuncListAttr
  GRUBlockCell GenerateBoundingBoxProposals GetDeadline GetElementAtIndex
  GetMinibatchSplitsWithPhysicalReplica GetMinibatchesInCsrWithPhysicalReplica GetOptions
  GetSessionHandle GetSessionHandleV2 GetSessionTensor GlobalIterId GraphDefVersion
  HistogramFixedWidth Igamma Igammac Imag InPolymorphicTwice InTopK InTopKV2 InplaceAdd
  InplaceSub InplaceUpdate Int64Output IntAttr IntInput IntInputFloatInput IntInputIntOutput
  IntOutput IntOutputFloatOutput Inv IsTensorFloat32Enabled IsotonicRegression
  KMC2ChainInitialization KernelLabel KernelLabelRequired KmeansPlusPlusInitialization
  KthOrderStatistic LSTMBlockCell Lgamma ListDiff ListInput ListOutput LowerBound MakeUnique
  MapDefun MaxPoolWithArgmax MergeDedupData MixedStruct MlirPassthroughOp
  NInPolymorphicTwice NInTwice NInTwoTypeVariables NIntsIn NIntsOut NIntsOutDefault
  NPolymorphicIn NPolymorphicOut NPolymorphicOutDefault NPolymorphicRestrictIn
  NPolymorphicRestrictOut Ndtri NearestNeighbors NegTrain NextAfter NonDeterministicInts
  NonMaxSuppression NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4
  NonMaxSuppressionV5 NonMaxSuppressionWithOverlaps None NthElement Old OpWithDefaultAttr
  OpWithFutureDefaultAttr OutT OutTypeList OutTypeListRestrict ParallelConcat
  ParallelDynamicStitch ParameterizedTruncatedNormal PlaceholderV2 Polygamma Polymorphic
  PolymorphicDefaultOut PolymorphicOut PopulationCount Prelinearize PrelinearizeTuple Real
  ReduceJoin RefIn RefInputFloatInput RefInputFloatInputIntOutput RefInputIntInput RefOut
  RefOutput RefOutputFloatOutput RefSelect Relayout RelayoutLike RequiresOlderGraphVersion
  ReservedAttr ReservedInput Restrict Reverse ReverseSequence RiscAbs RiscAdd
  RiscBinaryArithmetic RiscBinaryComparison RiscBitcast RiscBroadcast RiscCast RiscCeil
  RiscConcat RiscCondition RiscConv RiscCos RiscDiv RiscDot RiscExp RiscFloor RiscGather
  RiscImag RiscIsFinite RiscLog RiscLogicalAnd RiscLogicalNot RiscLogicalOr RiscMax RiscMin
  RiscMul RiscNeg RiscPad RiscPool RiscPow RiscReal RiscReduce RiscRem RiscReshape
  RiscReverse RiscScatter RiscShape RiscSign RiscSlice RiscSort RiscSqueeze RiscSub
  RiscTranspose RiscTriangularSolve RiscUnary RiscWhile SampleDistortedBoundingBox
  SampleDistortedBoundingBoxV2 SdcaFprint SdcaShrinkL1 SegmentMax SegmentMaxV2 SegmentMean
  SegmentMin SegmentMinV2 SegmentProd SegmentProdV2 SegmentSum SegmentSumV2 SetSize Simple
  SimpleStruct Sinh SleepIdentityOp SleepOp SobolSample SoftmaxCrossEntropyWithLogits
  SpaceToBatch Spence SplitDedupData Stack StackClose StackCloseV2 StackPop StackPopV2
  StackPush StackPushV2 StackV2 StatefulStandardNormal StatefulStandardNormalV2
  StatefulTruncatedNormal StatefulUniform StatefulUniformFullInt StatefulUniformInt
  StatelessParameterizedTruncatedNormal StatelessSampleDistortedBoundingBox
  StochasticCastToInt StoreMinibatchStatisticsInFdo StridedSliceAssign TemporaryVariable
  TensorArray TensorArrayClose TensorArrayCloseV2 TensorArrayConcat TensorArrayConcatV2
  TensorArrayGather TensorArrayGatherV2 TensorArrayPack TensorArrayRead TensorArrayReadV2
  TensorArrayScatter TensorArrayScatterV2 TensorArraySize TensorArraySizeV2 TensorArraySplit
  TensorArraySplitV2 TensorArrayUnpack TensorArrayV2 TensorArrayWrite TensorArrayWriteV2
  TensorListConcat TensorListConcatLists TensorListPushBackBatch TensorMapErase
  TensorMapHasKey TensorMapInsert TensorMapStackKeys TensorStridedSliceUpdate TestAttr
  ThreadPoolHandle Timestamp ToBool TopK TopKUnique TopKWithUnique TwoFloatInputs
  TwoFloatInputsFloatOutput TwoFloatInputsIntOutput TwoFloatOutputs TwoIntInputs
  TwoIntOutputs TwoRefsIn TypeList TypeListRestrict TypeListTwice Unary Unbatch
  UncompressElement Unique UniqueV2 UniqueWithCounts UniqueWithCountsV2 UnravelIndex
  UnsortedSegmentJoin UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd
  UnsortedSegmentSum Unstage UpdateTaskIdAndGlobalCoreArray UpperBound Variable
  WorkerHeartbeat Xlog1py Zeta
  """
)

CHECKPOINT_OPS = frozenset({"SaveV2", "MergeV2Checkpoints", "RestoreV2"})
ALLOWED = frozenset().union(*ALLOWED_OPS.values())
UNREVIEWED = "not reviewed for segbeam (an op of a newer TensorFlow, or none at all)"


def refusal_reason(op: str) -> Optional[str]:
  """None for an allowed op; otherwise why `op` is refused, in a few words. Checkpoint ops are
  refused here: only `model_safety` knows where the saver runs them."""
  if op in ALLOWED:
    return None
  if op in CHECKPOINT_OPS:
    return "a checkpoint read or write outside the saver of the export's own variables"
  for reason, pattern in _REFUSED_BY_NAME:
    if pattern.search(op):
      return reason
  if op in _REFUSED_OTHERS:
    return "not needed to segment an image"
  return UNREVIEWED


def reviewed(op: str) -> bool:
  """True when `op` is in a list or pattern here, allowed or refused."""
  return refusal_reason(op) != UNREVIEWED
