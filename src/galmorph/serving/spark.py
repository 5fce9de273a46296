"""Survey-scale batch classification with Apache Spark: the registered pyfunc as a Spark UDF.

Millions of cut-outs are a Spark job, not a loop: the model is loaded once per executor Python worker
(mlflow.pyfunc.spark_udf ships it from the driver, so executors need no access to the tracking server) and
images are scored in Arrow batches. Inputs are a folder/glob read with Spark's `binaryFile` source (the bytes
travel inside Spark, so HDFS/S3/GCS work) or a table of paths on a shared file system (relative ones start at
the table's folder); the output is Parquet with the same numbers `galmorph predict` writes, after the table's
own columns (an output whose name the table has gets `pred_` in front). The output folder appears complete or
not at all, and `--overwrite` replaces only a previous output of Spark's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from galmorph.config import CLASSES, MlflowConfig
from galmorph.errors import UserError
from galmorph.models.inference import ERROR_PREFIX
from galmorph.serving.resolve import ModelRef, resolve_model
from galmorph.tracking import logged_model

IMAGE_GLOB = "*.{jpg,jpeg,png,JPG,JPEG,PNG}"
OUTPUT_COLUMNS = ("path", *(f"p_{c}" for c in CLASSES), "label", "error")
OUTPUT_PREFIX = "pred_"
"""Put in front of an output column's name that an input table already has (label -> pred_label)."""
IMAGE_PATH, IMAGE, RESULT = "__galmorph_path", "__galmorph_image", "__galmorph_result"
"""Working columns, named so that no catalogue has them."""
SPARK_OUTPUT_FILE = re.compile(r"^(_SUCCESS|part-.*|\..*\.crc|_committed_.*|_started_.*|_temporary)$")
"""What Spark's Parquet writer leaves in an output folder: all that `--overwrite` agrees to replace."""
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


def _col(name: str) -> Any:
    """A column by its exact name, dots and backticks included."""
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    return F.col("`" + name.replace("`", "``") + "`")


def output_names(input_columns: Sequence[str]) -> dict[str, str]:
    """The name of each output column (path, p_<class>..., label, error): as it is, or with `pred_` in front
    as long as an input column has that name (Spark compares names without case)."""
    taken = {c.lower() for c in input_columns}
    names: dict[str, str] = {}
    for column in OUTPUT_COLUMNS:
        name = column
        while name.lower() in taken:
            name = OUTPUT_PREFIX + name
        names[column] = name
        taken.add(name.lower())
    return names


def _table_folder(source: str) -> str:
    """Where a table's relative image paths start: the table's own folder (as evaluate-folder and the manifest
    source read them), or the working directory for a table on a remote file system."""
    if "://" in source and not source.startswith("file:"):
        return os.getcwd()
    return str(Path(source.removeprefix("file://").removeprefix("file:")).resolve().parent)


def read_images(spark: Any, source: str, *, path_column: str = "image_path") -> Any:
    """A DataFrame of a table's own columns (none for a folder) plus IMAGE_PATH (the file) and IMAGE (base64
    bytes, or file:<absolute path> that the executors open)."""
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
        given = _col(path_column).cast("string")
        # relative paths start at the table's folder; the model reads a file only when told so (file:<path>)
        absolute = F.when(given.startswith("/"), given).otherwise(
            F.concat(F.lit(_table_folder(source) + os.sep), given)
        )
        return table.withColumn(IMAGE_PATH, absolute).withColumn(IMAGE, F.concat(F.lit("file:"), F.col(IMAGE_PATH)))
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
    return files.select(path.alias(IMAGE_PATH), image.alias(IMAGE))


def classify(
    spark: Any,
    images: Any,
    model_uri: str,
    *,
    tta: bool = False,
    threshold: float = 0.0,
    cfg: MlflowConfig | None = None,
) -> Any:
    """The input columns of `images` (read_images) unchanged, then path, p_<class>..., label and error by the
    pyfunc (one Python worker per task loads it once), named by output_names so that none replaces an input."""
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    udf = logged_model.spark_udf(
        spark, model_uri, result_type=RESULT_TYPE, params={"tta": tta, "threshold": threshold}, cfg=cfg
    )
    inputs = [c for c in images.columns if c not in (IMAGE, IMAGE_PATH)]
    names = output_names(inputs)
    scored = images.withColumn(RESULT, udf(F.struct(F.col(IMAGE).alias("image"))))
    failed = F.col(f"{RESULT}.label").startswith(ERROR_PREFIX)
    return scored.select(
        *(_col(c) for c in inputs),
        F.col(IMAGE_PATH).alias(names["path"]),
        *(F.col(f"{RESULT}.p_{c}").alias(names[f"p_{c}"]) for c in CLASSES),
        F.when(failed, F.lit("")).otherwise(F.col(f"{RESULT}.label")).alias(names["label"]),
        F.when(failed, F.substring(F.col(f"{RESULT}.label"), len(ERROR_PREFIX) + 1, 10_000))
        .otherwise(F.lit(""))
        .alias(names["error"]),
    )


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """What `galmorph batch` did: the model that answered, rows per label ("unreadable" for errors) and the
    output columns renamed because the input table had their names."""

    ref: ModelRef
    counts: dict[str, int]
    renamed: dict[str, str]


def _hadoop_fs(spark: Any, path: str) -> tuple[Any, Any]:
    """(Hadoop FileSystem, Path) of `path`: where Spark itself writes it (local, HDFS, S3...)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _foreign_entries(fs: Any, hpath: Any) -> list[str] | None:
    """None when `hpath` is a previous output of Spark's Parquet writer (_SUCCESS or part-* files and nothing
    but Spark's own files); else what makes it someone else's (its entries, or that it is a file)."""
    if not fs.getFileStatus(hpath).isDirectory():
        return ["(a file, not a folder)"]
    names = [status.getPath().getName() for status in fs.listStatus(hpath)]
    foreign = [n for n in names if not SPARK_OUTPUT_FILE.match(n)]
    if foreign or not any(n == "_SUCCESS" or n.startswith("part-") for n in names):
        return sorted(foreign) or ["(no _SUCCESS or part-* files)"]
    return None


def _write_replacing(spark: Any, scored: Any, out: str, *, overwrite: bool) -> None:
    """Write `scored` to a hidden folder beside `out`, then rename it to `out`: `out` appears complete or not
    at all, and with --overwrite a previous output is replaced only once the new one is written. A folder
    that is not a previous batch output is never replaced."""
    fs, target = _hadoop_fs(spark, out)
    if fs.exists(target):
        if not overwrite:
            raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
        foreign = _foreign_entries(fs, target)
        if foreign is not None:
            raise UserError(
                f"{out}: exists and is not a previous `galmorph batch` output ({', '.join(foreign[:5])}); "
                "--overwrite replaces only those: choose another OUT"
            )
    token = uuid.uuid4().hex[:12]
    parent, name = target.getParent(), target.getName()
    jvm = spark.sparkContext._jvm
    tmp = jvm.org.apache.hadoop.fs.Path(parent, f".{name}.tmp-{token}")
    old = jvm.org.apache.hadoop.fs.Path(parent, f".{name}.old-{token}")
    try:
        scored.write.mode("errorifexists").parquet(tmp.toString())
        had_old = fs.exists(target)
        if had_old and not fs.rename(target, old):
            raise UserError(f"{out}: could not move the previous output aside; it is unchanged")
        if not fs.rename(tmp, target):
            if had_old:
                fs.rename(old, target)
            raise UserError(f"{out}: could not rename the new output into place; the previous one is unchanged")
        if had_old:
            fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


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
) -> BatchResult:
    """Score `source` into the Parquet folder `out`; a UserError when no image could be scored (the rows and
    their errors are written)."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    if "://" not in out and Path(out).exists() and not overwrite:  # before Spark starts: fail fast
        raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
    ref = resolve_model(model, cfg)
    spark = spark_session(master)
    images = read_images(spark, source, path_column=path_column)
    if partitions:
        images = images.repartition(partitions)
    scored = classify(spark, images, ref.uri, tta=tta, threshold=threshold, cfg=cfg)
    names = output_names([c for c in images.columns if c not in (IMAGE, IMAGE_PATH)])
    _write_replacing(spark, scored, out, overwrite=overwrite)
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    written = spark.read.parquet(out)
    label = names["label"]
    counts = {
        (row[label] or "unreadable"): int(row["count"])
        for row in written.groupBy(label).agg(F.count(F.lit(1)).alias("count")).collect()
    }
    if not counts:
        raise UserError(f"{source}: no JPEG or PNG images found")
    if set(counts) == {"unreadable"}:
        first = written.select(names["path"], names["error"]).first()
        raise UserError(
            f"{source}: none of the {counts['unreadable']} images could be scored "
            f"(first: {first[0]}: {first[1]}); the errors are in {out}"
        )
    return BatchResult(ref, counts, {k: v for k, v in names.items() if k != v})
