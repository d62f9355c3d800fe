"""segbeam: batch image segmentation with a Keras U-Net on Apache Beam."""

import os

__version__ = "0.2.0"

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX;
# on others (AVX2 machines, many cloud VMs) they are off, and the U-Net's forward pass is slower
# without them, with the same outputs (BENCHMARKS.md, Measured design choices). Read when TensorFlow
# is first imported, so it is set here, before any segbeam module imports it; an explicit
# TF_ENABLE_ONEDNN_OPTS=0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
