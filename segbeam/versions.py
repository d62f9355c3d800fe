"""The versions segbeam's worker image pins: Python, Beam and TensorFlow.

One place for deploy/Dockerfile (whose ARGs tests/deploy/deploy_test.py holds to these),
constraints.txt (the exact, tested set of packages, which pins this Beam and TensorFlow; the same
test checks it, and scripts/update-constraints.sh reads them here) and `segbeam submit`, which
refuses to submit from a machine whose versions differ: Beam documents that a job submitted with
another Python than its workers' fails right after submission. setup.py declares ranges that
admit these. Imports nothing.
"""

PYTHON_VERSION = "3.11"
BEAM_VERSION = "2.77.0"
TENSORFLOW_VERSION = "2.21.0"
