"""Fine-tune and benchmark ResNet-50 on class-per-folder JPEG sets, fed by a C++ reader."""
import os

# TensorFlow turns its oneDNN CPU kernels on by default for some CPUs and leaves them off for
# others (it decides by CPU features; AVX2-only CPUs get them off), although they make a
# ResNet-50 training step much faster on the CPUs we measured. How much on this machine:
# `python -m bench.step --onednn false,true` (published runs: results/published/*-step/).
# TensorFlow reads this once, at import: flowers_tl must be imported first. An explicit
# TF_ENABLE_ONEDNN_OPTS=0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
