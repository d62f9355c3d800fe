"""The default model shipped inside the package, used when no --model is given."""

import os

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


def default_model_dir() -> str:
  if not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "saved_model.pb")):
    raise FileNotFoundError(
      f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; reinstall segbeam or "
      "pass --model"
    )
  return DEFAULT_MODEL_DIR
