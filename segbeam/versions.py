"""The versions segbeam's worker image pins: Python, Beam and TensorFlow.

One place for setup.py (which reads this file), deploy/Dockerfile (whose ARGs
tests/deploy/deploy_test.py holds to these) and `segbeam submit`, which refuses to submit from
a machine whose versions differ: Beam documents that a job submitted with another Python than
its workers' fails right after submission. Imports nothing.
"""

PYTHON_VERSION = "3.11"
BEAM_VERSION = "2.77.0"
TENSORFLOW_VERSION = "2.21.0"
