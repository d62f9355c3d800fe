"""gcp-storage-emulator's command line, with the generation preconditions GCS checks.

The emulator ignores `ifGenerationMatch`, on which segbeam's output claim relies (an upload
with generation 0 creates only where no object exists; a delete with a generation removes only
that version). This adds GCS's documented answer, 412 Precondition Failed, to its object
inserts and deletes before the server module binds its routes, then runs its `main`.
"""

from __future__ import annotations

from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> int:
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return 0  # GCS's 'no live object'


def _inserted_name(request):
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  return data.get("meta", {}).get("name") if isinstance(data, dict) else None


def _with_precondition(handler, name_of):
  def checked(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    name = name_of(request)
    if wanted and name is not None:
      if int(wanted[0]) != _generation(storage, request.params["bucket_name"], name):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})
        return None
    return handler(request, response, storage, *args, **kwargs)

  return checked


objects.insert = _with_precondition(objects.insert, _inserted_name)
objects.delete = _with_precondition(objects.delete, lambda request: request.params["object_id"])

if __name__ == "__main__":
  from gcp_storage_emulator.__main__ import main

  main()
