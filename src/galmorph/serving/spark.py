"""Survey-scale batch classification with Apache Spark: the registered pyfunc as a Spark UDF.

Millions of cut-outs are a Spark job, not a loop: the model is loaded once per executor Python worker
(mlflow.pyfunc.spark_udf ships it from the driver, so executors need no access to the tracking server),
images are scored in Arrow batches, and the result is Parquet with one row per image:
`path, p_spiral, p_elliptical, label, error` (label "" and the reason in `error` for an unreadable file),
the same numbers `galmorph predict` writes.

Input, either
  * a folder or glob of JPEG/PNG files, read with Spark's `binaryFile` source (works on HDFS, S3, GCS: the
    bytes travel inside Spark, executors need no shared file system), or
  * a table (.parquet or .csv, with header) whose `--path-column` holds image paths every executor can
    open (a shared file system such as NFS or Lustre); other columns are kept in the output.

On one machine (pyspark from `pip install 'galmorph[spark]'`, Java 17):

    galmorph batch data/survey/ scores.parquet --master 'local[8]'
    galmorph batch catalogue.parquet scores.parquet --path-column image_path --tta

On a cluster, submit this file; the executors need the same Python packages as the driver (a cluster
image or a conda/venv archive with galmorph installed, see Spark's "Python Package Management"):

    spark-submit --master yarn --deploy-mode cluster \\
        --archives galmorph-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \\
        --files params.yaml \\
        --conf spark.yarn.appMasterEnv.MLFLOW_TRACKING_URI=http://mlflow.example.org:5000 \\
        "$(python -c 'import galmorph.serving.spark as m; print(m.__file__)')" \\
        s3a://survey/cutouts/ s3a://survey/scores.parquet --model models:/galmorph@champion \\
        --partitions 2000

(`python -m galmorph.serving.spark --help` lists the options. Only the driver talks to the MLflow
store; partitions of a few thousand images each keep every task's model-load cost small.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from galmorph import tracking
from galmorph.config import CLASSES, MlflowConfig, Params, load_params
from galmorph.errors import UserError
from galmorph.serving.predict import resolve_model
from galmorph.serving.pyfunc import ERROR_PREFIX

IMAGE_GLOB = "*.{jpg,jpeg,png,JPG,JPEG,PNG}"
TABLE_SUFFIXES = (".parquet", ".csv")
RESULT_TYPE = ", ".join([*(f"p_{c} double" for c in CLASSES), "label string"])
ARROW_BATCH = 256
"""Rows per Arrow batch handed to the model: images are large rows, Spark's default (10,000) is not."""


def _pyspark() -> Any:
    try:
        import pyspark.sql  # noqa: F401
    except ImportError:
        raise UserError("pyspark is not installed: pip install 'galmorph[spark]' (and Java 17)") from None
    import pyspark

    return pyspark


def spark_session(master: str | None = None, app_name: str = "galmorph-batch") -> Any:
    """The active session (spark-submit) or a new one on `master` (default local[*])."""
    pyspark = _pyspark()
    builder = pyspark.sql.SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not pyspark.SparkContext._active_spark_context:
        builder = builder.master("local[*]")
    if (master or "local").startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers in this venv, not PATH's python3
    spark = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH)).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def read_images(spark: Any, source: str, *, path_column: str = "image_path") -> Any:
    """A DataFrame with `path` and `image` (base64 bytes, or a path the executors open) plus a table's
    other columns."""
    from pyspark.sql import functions as F

    if Path(source).suffix.lower() in TABLE_SUFFIXES:
        if not Path(source).exists() and "://" not in source:
            raise UserError(f"{source}: no such table")
        if source.lower().endswith(".csv"):
            table = spark.read.option("header", True).csv(source)
        else:
            table = spark.read.parquet(source)
        if path_column not in table.columns:
            raise UserError(
                f"{source}: no column {path_column!r} (columns: {', '.join(table.columns)}); pass --path-column"
            )
        return table.withColumn("path", F.col(path_column).cast("string")).withColumn("image", F.col("path"))
    if "://" not in source and not Path(source).exists() and not any(ch in source for ch in "*?["):
        raise UserError(f"{source}: no such folder")
    files = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", IMAGE_GLOB)
        .option("recursiveFileLookup", "true")
        .load(source)
    )
    # file:/x -> /x, so local paths read the same as `galmorph predict`'s
    path = F.regexp_replace(F.col("path"), r"^file:(//)?", "")
    # some Spark versions wrap base64 at 76 characters (spark.sql.chunkBase64String.enabled): unwrap it
    image = F.regexp_replace(F.base64(F.col("content")), r"\s+", "")
    return files.select(path.alias("path"), image.alias("image"))


def classify(
    spark: Any,
    images: Any,
    model_uri: str,
    *,
    tta: bool = False,
    threshold: float = 0.0,
    cfg: MlflowConfig | None = None,
) -> Any:
    """Add p_<class>, label and error columns by the pyfunc (one Python worker per task loads it once)."""
    from pyspark.sql import functions as F

    udf = tracking.spark_udf(
        spark, model_uri, result_type=RESULT_TYPE, params={"tta": tta, "threshold": threshold}, cfg=cfg
    )
    scored = images.withColumn("_out", udf(F.struct(F.col("image").alias("image"))))
    failed = F.col("_out.label").startswith(ERROR_PREFIX)
    return scored.select(
        *[c for c in images.columns if c != "image"],
        *(F.col(f"_out.p_{c}").alias(f"p_{c}") for c in CLASSES),
        F.when(failed, F.lit("")).otherwise(F.col("_out.label")).alias("label"),
        F.when(failed, F.substring(F.col("_out.label"), len(ERROR_PREFIX) + 1, 10_000))
        .otherwise(F.lit(""))
        .alias("error"),
    )


def run_batch(
    source: str,
    out: str,
    model: str | None,
    cfg: MlflowConfig,
    *,
    master: str | None = None,
    path_column: str = "image_path",
    tta: bool = False,
    threshold: float = 0.0,
    partitions: int | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Score `source` into the Parquet folder `out`; returns counts per label (and errors)."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    if "://" not in out and Path(out).exists() and not overwrite:
        raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
    ref = resolve_model(model, cfg)
    spark = spark_session(master)
    images = read_images(spark, source, path_column=path_column)
    if partitions:
        images = images.repartition(partitions)
    scored = classify(spark, images, ref.uri, tta=tta, threshold=threshold, cfg=cfg)
    # Spark's commit protocol: the folder is complete (with _SUCCESS) or the job failed
    scored.write.mode("overwrite" if overwrite else "errorifexists").parquet(out)
    from pyspark.sql import functions as F

    written = spark.read.parquet(out)
    counts = {
        (row["label"] or "unreadable"): int(row["count"])
        for row in written.groupBy("label").agg(F.count(F.lit(1)).alias("count")).collect()
    }
    if not counts:
        raise UserError(f"{source}: no JPEG or PNG images found")
    print(f"{ref.display}: wrote {sum(counts.values())} rows to {out}: {counts}", file=sys.stderr)
    return counts


def main(params: Params, args: argparse.Namespace) -> None:
    threshold = params.evaluate.abstain_threshold if args.threshold is None else args.threshold
    run_batch(
        args.input,
        args.out,
        args.model,
        params.mlflow,
        master=args.master,
        path_column=args.path_column,
        tta=args.tta,
        threshold=threshold,
        partitions=args.partitions,
        overwrite=args.overwrite,
    )


if __name__ == "__main__":  # spark-submit runs this file
    from galmorph import cli

    parser = argparse.ArgumentParser(prog="galmorph-batch", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params.yaml (for mlflow.* and the threshold)")
    cli.COMMANDS["batch"][2](parser)
    ns = parser.parse_args()
    try:
        main(load_params(ns.params), ns)
    except UserError as exc:
        print(f"galmorph batch: error: {exc}", file=sys.stderr)
        sys.exit(2)
