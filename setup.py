"""segbeam: batch image segmentation with a Keras U-Net on Apache Beam.

The versions below resolve together (checked with pip on Python 3.11). Beam's and TensorFlow's
are those of the worker image, kept in segbeam/versions.py with the image's Python: the worker
Dockerfile (deploy/) and `segbeam submit` read them there.
"""

import os
import runpy

import setuptools

_VERSIONS = runpy.run_path(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "segbeam", "versions.py")
)
BEAM_VERSION = _VERSIONS["BEAM_VERSION"]
TENSORFLOW_VERSION = _VERSIONS["TENSORFLOW_VERSION"]

INSTALL_REQUIRES = [
  f"apache-beam[gcp]=={BEAM_VERSION}",
  f"tensorflow=={TENSORFLOW_VERSION}",
  "keras==3.15.1",
  "tfx-bsl==1.21.0",
  "pyarrow==25.0.1",
  "duckdb==2.0.0",
  "pillow==12.3.0",
  "numpy==2.4.6",
]

# Ships real photos (a cat among them) for `segbeam demo`, so none are committed here.
DEMO_REQUIRE = ["scikit-image==0.26.0"]

EXTRAS_REQUIRE = {
  "demo": DEMO_REQUIRE,
  "test": [
    "pytest==9.2.0",
    "hypothesis==6.170.15",
    "gcp-storage-emulator==2026.7.19",
    # tests/model/conversion_test.py saves a Keras 2 .h5 as its users do, with tf.keras.
    "tf-keras==2.21.0",
    *DEMO_REQUIRE,
  ],
  # bench/reference_pattern.py: Beam's TFModelHandlerTensor imports tensorflow_hub.
  # bench/gil_profile.py samples `segbeam run` with py-spy.
  "bench": ["tensorflow-hub==0.16.1", "tf-keras==2.21.0", "py-spy==0.4.3"],
}

setuptools.setup(
  name="segbeam",
  version="0.1.0",
  description="Batch image segmentation with a Keras U-Net on Apache Beam",
  python_requires=">=3.10",
  packages=setuptools.find_packages(include=["segbeam", "segbeam.*"]),
  package_data={"segbeam.model": ["default_model/**/*", "default_model/*"]},
  include_package_data=False,
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
  entry_points={"console_scripts": ["segbeam=segbeam.startup:main"]},
)
