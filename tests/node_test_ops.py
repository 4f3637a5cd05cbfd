"""Which ops' onnx backend node tests must pass through qrt.backend, by the issue that delivers them."""

FLOAT_RUNTIME = """
Abs Add And ArgMax AveragePool BatchNormalization Cast Clip Concat Constant ConstantOfShape Conv
ConvTranspose Div Dropout Elu Equal Erf Exp Expand Flatten Gather Gelu Gemm GlobalAveragePool GlobalMaxPool
Greater GreaterOrEqual HardSigmoid HardSwish Identity If IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu
Less LessOrEqual Log MatMul Max MaxPool Mean Min Mul Neg Not Or PRelu Pad Pow Range Reciprocal ReduceMax
ReduceMean ReduceMin ReduceSum Relu Reshape Resize Shape Sigmoid Size Slice Softmax Softplus Split Sqrt
Squeeze Sub Sum Tanh Tile Transpose Unsqueeze Where
""".split()

INT8 = """
QuantizeLinear DequantizeLinear DynamicQuantizeLinear QLinearConv QLinearMatMul MatMulInteger ConvInteger
""".split()

LONG_TAIL = """
ArgMin Attention Ceil Celu Cos CumSum DepthToSpace Einsum Floor GRU GatherElements GatherND
InstanceNormalization LogSoftmax Loop Mish Mod RMSNormalization ReduceL1 ReduceL2 ReduceLogSumExp ReduceProd
ReduceSumSquare RotaryEmbedding Round Scan ScatterElements ScatterND Selu Sign Sin Softsign SpaceToDepth
TopK Trilu Upsample Xor
Compress OneHot EyeLike CastLike
RNN NonZero ReduceLogSum
Hardmax
GroupNormalization LpPool GlobalLpPool
""".split()

SEQUENCES = """
SequenceConstruct SequenceEmpty SequenceAt SequenceInsert SequenceErase SequenceLength SplitToSequence
ConcatFromSequence SequenceMap Optional OptionalHasElement OptionalGetElement
""".split()
