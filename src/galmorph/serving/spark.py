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
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from galmorph.config import CLASSES, FitsConfig, MlflowConfig
from galmorph.data.catalogue import PATH_COLUMNS
from galmorph.errors import UserError
from galmorph.models.inference import ERROR_PREFIX
from galmorph.serving.catalogue import CatalogueRequest, catalogue_images, open_catalogue
from galmorph.serving.catalogue import output_names as prefixed_names
from galmorph.serving.resolve import ModelRef, resolve_model
from galmorph.tracking import logged_model

IMAGE_GLOB = "*.{jpg,jpeg,png,fits,fit,fts,fz,JPG,JPEG,PNG,FITS,FIT,FTS,FZ}"
OUTPUT_COLUMNS = ("path", *(f"p_{c}" for c in CLASSES), "label", "error")
"""The output columns of every model; a model with an out-of-distribution detector adds ood_score before error."""
IMAGE_PATH, IMAGE, RESULT = "__galmorph_path", "__galmorph_image", "__galmorph_result"
"""Working columns, named so that no catalogue has them."""
ROW_ERROR = "__galmorph_row_error"
"""Working column of a catalogue read on the driver: why a row has no image (no path, a failed cut-out)."""
DRIVER_TABLE_SUFFIXES = (".fits", ".fit", ".fts", ".vot", ".votable", ".xml", ".ecsv")
"""Catalogues Spark cannot read itself: read on the driver through astropy.table (a FITS file only when it
holds a table; a FITS image is an image)."""
SPARK_OUTPUT_FILE = re.compile(r"^(_SUCCESS|part-.*|\..*\.crc|_committed_.*|_started_.*|_temporary)$")
"""What Spark's Parquet writer leaves in an output folder: all that `--overwrite` agrees to replace."""
TABLE_SUFFIXES = (".parquet", ".csv")
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


def output_names(input_columns: Sequence[str], extra: Sequence[str] = ()) -> dict[str, str]:
    """The name of each output column (path, p_<class>..., label, the model's `extra` outputs such as
    ood_score, error): as it is, or with `pred_` in front as long as an input column has that name (Spark
    compares names without case)."""
    return prefixed_names(input_columns, (*OUTPUT_COLUMNS[:-1], *extra, OUTPUT_COLUMNS[-1]))


def _table_folder(source: str) -> str:
    """Where a table's relative image paths start: the table's own folder (as evaluate-folder and the manifest
    source read them), or the working directory for a table on a remote file system."""
    if "://" in source and not source.startswith("file:"):
        return os.getcwd()
    return str(Path(source.removeprefix("file://").removeprefix("file:")).resolve().parent)


def _holds_table(source: str) -> bool:
    """A local FITS file with a table extension (a catalogue), or a VOTable/ECSV file."""
    if "://" in source or not Path(source).is_file():
        return False
    if Path(source).suffix.lower() not in (".fits", ".fit", ".fts"):
        return True
    from astropy.io import fits as pyfits

    try:
        with pyfits.open(source, memmap=True) as hdus:
            return any(isinstance(h, pyfits.BinTableHDU | pyfits.TableHDU) for h in hdus)
    except (OSError, ValueError):
        return False


def read_catalogue_on_driver(spark: Any, source: str, request: CatalogueRequest) -> Any:
    """A catalogue read through astropy.table on the driver (FITS, VOTable, ECSV, or a local CSV/Parquet with
    RA/Dec and no path column), each row's image found as `galmorph predict --catalogue` finds it (its path,
    else its cut-out, fetched here into cutouts.cache_dir: a shared file system on a cluster), as a DataFrame
    of the table's own columns, IMAGE_PATH, IMAGE and ROW_ERROR."""
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    table, columns, cutouts = open_catalogue(source, request)
    images = catalogue_images(table, columns, source, cutouts=cutouts, service=request.service)
    try:
        table = table.copy(copy_data=False)
        table.convert_bytestring_to_unicode()  # FITS text arrives as bytes: a string column, not a binary one
        frame = table.to_pandas()
    except (ValueError, TypeError) as exc:  # multidimensional columns, mixins without a pandas form
        raise UserError(f"{source}: cannot hand this catalogue to Spark ({exc})") from None
    frame[IMAGE_PATH] = [str(Path(p).resolve()) if p else "" for p in images.paths]
    frame[ROW_ERROR] = images.errors
    rows = spark.createDataFrame(frame)
    image = F.when(F.col(IMAGE_PATH) != "", F.concat(F.lit("file:"), F.col(IMAGE_PATH))).otherwise(F.lit(""))
    return rows.withColumn(IMAGE, image)


def read_images(
    spark: Any, source: str, *, path_column: str | None = "image_path", catalogue: CatalogueRequest | None = None
) -> Any:
    """A DataFrame of a table's own columns (none for a folder) plus IMAGE_PATH (the file) and IMAGE (base64
    bytes, or file:<absolute path> that the executors open). With `catalogue`, FITS/VOTable/ECSV catalogues and
    local tables with RA/Dec but no path column are read on the driver (read_catalogue_on_driver)."""
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    suffix = Path(source).suffix.lower()
    if catalogue is not None and suffix in DRIVER_TABLE_SUFFIXES and _holds_table(source):
        return read_catalogue_on_driver(spark, source, dataclasses.replace(catalogue, path_column=path_column))
    if suffix in TABLE_SUFFIXES:
        if not Path(source).exists() and "://" not in source:
            raise UserError(f"{source}: no such table")
        if source.lower().endswith(".csv"):
            table = spark.read.option("header", True).csv(source)
        else:
            table = spark.read.parquet(source)
        local = "://" not in source
        if path_column is None:  # the usual names, as predict --catalogue looks for them
            path_column = next((c for c in PATH_COLUMNS if c in table.columns), "image_path")
        if path_column not in table.columns and catalogue is not None and local:
            return read_catalogue_on_driver(spark, source, catalogue)  # positions (or a one-line error)
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
    model_dir: str | os.PathLike,
    *,
    tta: bool = False,
    threshold: float = 0.0,
    cfg: MlflowConfig | None = None,
    fits: FitsConfig | None = None,
) -> tuple[Any, dict[str, str]]:
    """The input columns of `images` (read_images) unchanged, then path, p_<class>..., label, ood_score (for a
    model with an out-of-distribution detector) and error by the pyfunc in `model_dir` (logged_model.download;
    one Python worker per task loads it once), named by output_names so that none replaces an input; and
    those names."""
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    schema = logged_model.output_schema(model_dir)  # the model's own outputs: ood_score only when it has one
    result_type = ", ".join(f"{name} {kind}" for name, kind in schema)
    udf = logged_model.spark_udf(
        spark, str(model_dir), result_type=result_type, params={"tta": tta, "threshold": threshold}, cfg=cfg, fits=fits
    )
    extra = [name for name, _ in schema if name not in OUTPUT_COLUMNS]
    inputs = [c for c in images.columns if c not in (IMAGE, IMAGE_PATH, ROW_ERROR)]
    names = output_names(inputs, extra)
    scored = images.withColumn(RESULT, udf(F.struct(F.col(IMAGE).alias("image"))))
    # a catalogue row without an image keeps its own reason (a blank cut-out...), not the model's "no image"
    row_error = F.col(ROW_ERROR) if ROW_ERROR in images.columns else F.lit("")
    without = row_error != ""
    failed = without | F.col(f"{RESULT}.label").startswith(ERROR_PREFIX)
    out = scored.select(
        *(_col(c) for c in inputs),
        F.col(IMAGE_PATH).alias(names["path"]),
        *(F.when(without, F.lit(None)).otherwise(F.col(f"{RESULT}.p_{c}")).alias(names[f"p_{c}"]) for c in CLASSES),
        F.when(failed, F.lit("")).otherwise(F.col(f"{RESULT}.label")).alias(names["label"]),
        *(F.when(failed, F.lit(None)).otherwise(F.col(f"{RESULT}.{c}")).alias(names[c]) for c in extra),
        F.when(without, row_error)
        .when(failed, F.substring(F.col(f"{RESULT}.label"), len(ERROR_PREFIX) + 1, 10_000))
        .otherwise(F.lit(""))
        .alias(names["error"]),
    )
    return out, names


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
    path_column: str | None = "image_path",
    tta: bool = False,
    threshold: float = 0.0,
    partitions: int | None = None,
    overwrite: bool = False,
    catalogue: CatalogueRequest | None = None,
    fits: FitsConfig | None = None,
) -> BatchResult:
    """Score `source` into the Parquet folder `out`; a UserError when no image could be scored (the rows and
    their errors are written)."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    if "://" not in out and Path(out).exists() and not overwrite:  # before Spark starts: fail fast
        raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
    ref = resolve_model(model, cfg)
    spark = spark_session(master)
    images = read_images(spark, source, path_column=path_column, catalogue=catalogue)
    if partitions:
        images = images.repartition(partitions)
    # one download on the driver: its signature says which columns the model gives; spark_udf ships it on
    with tempfile.TemporaryDirectory(prefix="galmorph-batch-") as tmp:
        model_dir = logged_model.download(ref.uri, tmp, cfg)
        scored, names = classify(spark, images, model_dir, tta=tta, threshold=threshold, cfg=cfg, fits=fits)
        _write_replacing(spark, scored, out, overwrite=overwrite)
    from pyspark.sql import functions as F  # pyspark is an optional extra, checked by _pyspark()

    written = spark.read.parquet(out)
    label = names["label"]
    counts = {
        (row[label] or "unreadable"): int(row["count"])
        for row in written.groupBy(label).agg(F.count(F.lit(1)).alias("count")).collect()
    }
    if not counts:
        raise UserError(f"{source}: no JPEG, PNG or FITS images found")
    if set(counts) == {"unreadable"}:
        first = written.select(names["path"], names["error"]).first()
        raise UserError(
            f"{source}: none of the {counts['unreadable']} images could be scored "
            f"(first: {first[0]}: {first[1]}); the errors are in {out}"
        )
    return BatchResult(ref, counts, {k: v for k, v in names.items() if k != v})
