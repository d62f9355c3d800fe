"""segbeam: batch image segmentation with a Keras U-Net on Apache Beam.

Dependencies are declared as a library declares them: the ranges segbeam works with, so that it
installs beside the packages of a user's own Beam pipeline. The exact, tested set is
constraints.txt at the repository root (CI and the worker image install with
`pip install -c constraints.txt ...`); tests/deploy/deploy_test.py holds every range below to
it, and it to segbeam/versions.py, where the worker image's Python, Beam and TensorFlow are
pinned for deploy/Dockerfile and `segbeam submit`.

Every third-party package segbeam imports is declared here (a test parses segbeam/ for them),
not left to arrive as some other package's dependency.
"""

import setuptools

# The lower bounds of keras, numpy, pillow, pyarrow, duckdb, h5py, google-crc32c (and the demo's
# scikit-image) were installed together, everything else as constraints.txt pins it, and run
# through the CLI (not the test suite): `segbeam demo`, summary, query, report, pack, a TFRecord
# run with the tfx-bsl handler, and exports of a .keras and a Keras 2 .h5 model.
INSTALL_REQUIRES = [
  # The image's Beam (segbeam/versions.py) and newer 2.x; tfx-bsl 1.21 takes >=2.53,<3.
  "apache-beam[gcp]>=2.77,<3",
  # TensorFlow, tfx-bsl and tf-keras are released in lockstep, one TensorFlow minor per
  # tfx-bsl minor: tfx-bsl 1.21 (and tf-keras 2.21) require tensorflow>=2.21,<2.22.
  "tensorflow>=2.21,<2.22",
  "tfx-bsl>=1.21,<1.22",
  # TensorFlow 2.21 requires keras>=3.12; segbeam builds and exports Keras 3 models.
  "keras>=3.12,<4",
  # segbeam parses SavedModel protos with TensorFlow's generated code: TensorFlow 2.21's range.
  "protobuf>=6.31.1,<8",
  # Reads Keras 2 .h5 files (segbeam/model/conversion.py); TensorFlow 2.21 takes >=3.11,<3.15.
  "h5py>=3.11,<4",
  # TFRecord framing checksums (segbeam/pipeline/tfrecord.py).
  "google-crc32c>=1.6,<2",
  "numpy>=2.0,<3",
  # Beam 2.77's own range.
  "pillow>=12.1.1,<13",
  # The first release built for NumPy 2; Beam 2.77 takes <26.
  "pyarrow>=16",
  # Tested from 1.5 (setup.py's lower bounds, above).
  "duckdb>=1.5,<3",
  # The output folder's claim on gs:// needs generation preconditions, which Beam's file
  # system does not expose (segbeam/run/output_claim.py); Beam 2.77's ranges.
  "google-cloud-storage>=2.18,<4",
  "google-api-core>=2.17,<3",
  # The storage client's HTTP session, widened for concurrent reads (segbeam/pipeline/sources.py);
  # google-cloud-storage's own range.
  "requests>=2.22,<3",
]

# Ships real photos (a cat among them) for `segbeam demo`, so none are committed here.
DEMO_REQUIRE = ["scikit-image>=0.24,<0.27"]

# tf-keras releases with TensorFlow's minor, like tfx-bsl.
TF_KERAS_REQUIRE = "tf-keras>=2.21,<2.22"

EXTRAS_REQUIRE = {
  "demo": DEMO_REQUIRE,
  # The test and bench tools from the release series constraints.txt pins, as tested.
  "test": [
    "pytest>=9.2,<10",
    "hypothesis>=6.170,<7",
    "gcp-storage-emulator>=2026.7",
    # tests/model/conversion_test.py saves a Keras 2 .h5 as its users do, with tf.keras.
    TF_KERAS_REQUIRE,
    # tests/deploy/deploy_test.py reads requirements and versions with it.
    "packaging>=24",
    # The formats' own writers, for tests of the Parquet and WebDataset readers
    # (tests/pipeline/shard_formats_test.py): Hugging Face datasets' Image feature and
    # webdataset's TarWriter, as users write their shards.
    "datasets>=5.2,<6",
    "webdataset>=1.0,<2",
    # The linter and formatter .ci/run checks the tree with (ruff.toml).
    "ruff>=0.17,<0.18",
    *DEMO_REQUIRE,
  ],
  # bench/reference_pattern.py: Beam's TFModelHandlerTensor imports tensorflow_hub.
  # bench/gil_profile.py samples `segbeam run` with py-spy.
  "bench": ["tensorflow-hub>=0.16,<0.17", TF_KERAS_REQUIRE, "py-spy>=0.4,<0.5"],
}

setuptools.setup(
  name="segbeam",
  version="0.2.0",
  description="Batch image segmentation with a Keras U-Net on Apache Beam",
  python_requires=">=3.10",
  packages=setuptools.find_packages(include=["segbeam", "segbeam.*"]),
  package_data={"segbeam.model": ["default_model/**/*", "default_model/*"]},
  include_package_data=False,
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
  entry_points={"console_scripts": ["segbeam=segbeam.console:main"]},
)
