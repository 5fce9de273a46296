"""A model file trained elsewhere (a models/model.pt from another machine or checkout) into the registry.

It is logged as the same pyfunc the train stage logs, in a run of its own, and registered as a new version
with @challenger, deduplicated by model digest like the register stage's. It is never promoted here: it has
no test metrics or predictions on this project's split for the gate, until `galmorph promote --version N
--rescore` scores it (and the champion) on the current test split and gates it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.models import resnet
from galmorph.serving.promotion import MODEL_DIGEST, Registered, register_version
from galmorph.tracking import logged_model, runs
from galmorph.tracking import registry as mlflow_registry

SOURCE = "registered_from"
"""Version and run tag: `file` for a model registered from a file (the register stage's carry no such tag)."""
MODEL_FILE = "model_file"
"""Version and run tag: the file's absolute path when it was registered."""
STAGE = "register-file"
"""The run's galmorph.stage (and name): not a dvc.yaml stage."""


def register_model_file(name: str, model_file: str | Path, cfg: MlflowConfig) -> Registered:
    """Log `model_file` as the galmorph pyfunc in a new run and register it as a version of `name` with
    @challenger; a model that a version already holds (same model digest) is not logged again, that version
    gets @challenger. UserError when the path is not a galmorph model file."""
    path = Path(model_file)
    if path.is_dir():
        raise UserError(
            f"--model {path}: a folder; pass the model file (models/model.pt; "
            "in a folder written by `galmorph export` it is artifacts/model.pt)"
        )
    if not path.is_file():
        raise UserError(f"--model {path}: no such file (expected a models/model.pt written by `galmorph train`)")
    loaded = resnet.load_model(path)  # a one-line UserError when it is not a galmorph model file
    digest = resnet.model_digest(path)
    known = [v for v in mlflow_registry.model_versions(name, cfg=cfg) if v.tags.get(MODEL_DIGEST) == digest]
    if known:  # nothing to log: register_version finds it again under the registry lock and moves @challenger
        return register_version(name, known[-1].uri, {}, cfg, digest=digest)

    source = {SOURCE: "file", MODEL_FILE: str(path.resolve())}
    sections = {"model": loaded.model_cfg, "preprocess": loaded.preprocess}
    with runs.start_run(cfg, STAGE, sections, run_name=STAGE, tags={**source, MODEL_DIGEST: digest}) as run:
        if loaded.metrics:  # the trainer's own summary (its validation split, elsewhere): kept, not checked
            runs.log_metrics({f"file_{k}": v for k, v in loaded.metrics.items()})
        with tempfile.TemporaryDirectory(prefix="galmorph-register-") as tmp:
            example = Path(tmp) / "example.jpg"  # a dark sky: the input example MLflow validates the signature with
            Image.new("RGB", (64, 64), (10, 10, 20)).save(example)
            model_uri = logged_model.log_classifier(
                loaded.model,
                loaded.model_cfg,
                loaded.preprocess,
                temperature=loaded.temperature,
                input_example=example,
                ood=loaded.ood,
            )
        run_id = run.info.run_id
    tags = {**source, "training_run_id": run_id, "model_uri": model_uri}
    registered = register_version(name, model_uri, tags, cfg, digest=digest)
    if registered.new:
        version = registered.version.version
        card = "\n".join(
            [
                f"# galmorph v{version}: spiral vs elliptical, registered from a model file",
                "",
                f"- **File:** `{source[MODEL_FILE]}` (model digest `{digest[:16]}`), trained elsewhere.",
                f"- **Recipe:** arch {loaded.model_cfg.arch}, head {loaded.model_cfg.head}, "
                f"image px {loaded.preprocess.image_size}, temperature {loaded.temperature:.3f}.",
                "- **Not evaluated here:** no test metrics until "
                f"`galmorph promote --version {version} --rescore` scores it on this project's test split.",
            ]
        )
        mlflow_registry.set_version_description(name, version, card, cfg=cfg)
    return registered
