"""Survey-scale batch classification with Apache Spark: the registered pyfunc as a Spark UDF.

Millions of cut-outs are a Spark job, not a loop: the model is loaded once per executor Python worker
(mlflow.pyfunc.spark_udf ships it from the driver, so executors need no access to the tracking server) and
images are scored in Arrow batches. Inputs are a folder/glob read with Spark's `binaryFile` source (the bytes
travel inside Spark, so HDFS/S3/GCS work) or a table of paths on a shared file system; the output is
Parquet with the same numbers `galmorph predict` writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from galmorph.config import CLASSES, MlflowConfig
from galmorph.errors import UserError
from galmorph.models.inference import ERROR_PREFIX
from galmorph.serving.resolve import ModelRef, resolve_model
from galmorph.tracking import logged_model

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
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

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
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    udf = logged_model.spark_udf(
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
) -> tuple[ModelRef, dict[str, int]]:
    """Score `source` into the Parquet folder `out`; returns the model that answered and counts per label."""
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
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    written = spark.read.parquet(out)
    counts = {
        (row["label"] or "unreadable"): int(row["count"])
        for row in written.groupBy("label").agg(F.count(F.lit(1)).alias("count")).collect()
    }
    if not counts:
        raise UserError(f"{source}: no JPEG or PNG images found")
    return ref, counts
