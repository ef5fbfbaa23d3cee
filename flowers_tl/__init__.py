"""Fine-tune and benchmark ResNet-50 on class-per-folder JPEG sets, fed by a C++ reader."""

__version__ = "0.1.0"
