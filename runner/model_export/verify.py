"""What makes a model folder the one metassl logged: MLmodel names our loader and no code, every data file has the
SHA-256 recorded at logging time, and (given the tracking store's record) that record is the store's.

Everything here reads files as bytes or as YAML with `yaml.safe_load`; nothing in the folder is executed or imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from schemas import UserError

LOADER_MODULE = "runner.model_export.pyfunc"
DATA_NAME = "classifier"
DATA_DIR = f"data/{DATA_NAME}"  # where MLflow copies the data folder inside the model folder
DIGESTS_KEY = "metassl_sha256"  # in MLmodel's metadata: data file name -> SHA-256
DIGEST_TAG = "metassl.model_sha256"  # on the LoggedModel in the store: the digest of those digests
# python_function keys MLflow writes for a loader-module model; any other (code, python_model, ...) brings code along.
ALLOWED_PYFUNC_KEYS = {"loader_module", "data", "env", "python_version", "code", "streamable"}


class TamperedModel(UserError):
    """A model folder that is not the one metassl logged (one line, exit 2 on the CLI)."""


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest_of_digests(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def data_digests(data_dir: Path) -> dict[str, str]:
    return {path.name: file_digest(path) for path in sorted(data_dir.iterdir()) if path.is_file()}


def verify_model_dir(model_dir: Path, expected: str | None = None) -> dict[str, str]:
    """Refuse (TamperedModel) a folder that is not as logged; return its data digests.

    `expected` is the store's DIGEST_TAG for the model, when the caller knows the store (a `runs:/` or `models:/`
    URI): it catches a folder whose files and MLmodel record were changed together.
    """
    where = f"model folder {model_dir}"
    fix = "download it again from its run, or re-log it by re-running the run's recipe"
    mlmodel_path = model_dir / "MLmodel"
    try:
        mlmodel = yaml.safe_load(mlmodel_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TamperedModel(f"{where}: MLmodel is unreadable ({str(exc).splitlines()[0][:120]}); {fix}") from None
    flavors = (mlmodel or {}).get("flavors") if isinstance(mlmodel, dict) else None
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    if not isinstance(pyfunc, dict) or set(flavors) != {"python_function"}:
        raise TamperedModel(f"{where}: MLmodel must have exactly the python_function flavor; {fix}")
    if pyfunc.get("loader_module") != LOADER_MODULE or pyfunc.get("data") != DATA_DIR:
        raise TamperedModel(
            f"{where}: MLmodel names loader {pyfunc.get('loader_module')!r} with data {pyfunc.get('data')!r},"
            f" not {LOADER_MODULE} with {DATA_DIR}; {fix}"
        )
    extra = sorted(set(pyfunc) - ALLOWED_PYFUNC_KEYS)
    if extra or pyfunc.get("code"):
        raise TamperedModel(f"{where}: MLmodel brings code along ({', '.join(extra) or 'code'}); {fix}")
    recorded = (mlmodel.get("metadata") or {}).get(DIGESTS_KEY)
    if not isinstance(recorded, dict) or not recorded:
        raise TamperedModel(f"{where}: MLmodel has no {DIGESTS_KEY} record of its data files; {fix}")
    data_dir = model_dir / DATA_DIR
    actual = data_digests(data_dir) if data_dir.is_dir() else {}
    for name in sorted(set(recorded) | set(actual)):
        if recorded.get(name) != actual.get(name):
            state = "is missing" if name not in actual else "was added" if name not in recorded else "differs"
            raise TamperedModel(f"{where}: {DATA_DIR}/{name} {state} (SHA-256 against MLmodel's record); {fix}")
    if expected is not None and digest_of_digests(recorded) != expected:
        raise TamperedModel(f"{where}: its record of data digests differs from the tracking store's; {fix}")
    return actual


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
