"""Every tunable of the CUDA kernels, in one place.

Launchers read these at call time, and kernels whose shared or local arrays depend on them are
built per value (the factories in each module cache one kernel per setting), so tests patch them
small to run multi-block and multi-tile paths on tiny tensors under the simulator.
"""

# 1-D kernels (element-wise, data movement, quantize): threads per block and a cap on blocks; the
# kernels loop grid-stride, so any size runs with at most MAX_BLOCKS blocks.
THREADS = 256
MAX_BLOCKS = 4096

# Row reductions (Softmax, LayerNormalization, global pooling): threads cooperating on one row,
# a power of two (the tree reduction halves it).
REDUCE_THREADS = 128

# Tiled GEMM and implicit-GEMM convolution: a block computes a BM x BN tile of the output, walking
# K in steps of BK through shared memory; each thread owns a TM x TN register tile, so a block has
# (BM / TM) * (BN / TN) threads. BM must be a multiple of TM and BN of TN.
GEMM_BM = 64
GEMM_BN = 64
GEMM_BK = 16
GEMM_TM = 4
GEMM_TN = 4

# Integer GEMM: use the dp4a instruction (4 byte products per instruction, int32 accumulation)
# on devices of compute capability >= 6.1. None decides from the device; the simulator never
# uses it (it runs the plain path, which computes the same int32 sums).
USE_DP4A = None

# Synchronize after every node so an asynchronous kernel fault is reported by the node that caused
# it rather than by a later copy (costs one sync per node; off by default).
SYNC_EACH_NODE = False

# Largest rank the strided kernels take after merging contiguous dimensions.
MAX_RANK = 8
