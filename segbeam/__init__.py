"""segbeam: batch image segmentation with a Keras U-Net on Apache Beam."""

__version__ = "0.1.0"
