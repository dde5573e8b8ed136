"""A PySpark job whose UDFs run on the bundle that ``--archives`` ships.

    spark-submit --archives dist/sparkjob-1.0.0.tar.gz#env \
        --conf spark.pyspark.python=./env/sparkjob-1.0.0/bin/python3.11 \
        examples/spark/job.py "Élan elan ÉLAN spark"

The driver does not have ``sparkjob``; only the executors import it, from the
unpacked archive. Prints one JSON object: the word counts, and where the
executors' Python ran.
"""

from __future__ import annotations

import json
import sys

from pyspark import SparkFiles
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf
from pyspark.sql.types import StringType

# The UDFs import sparkjob when they run, on the executors: only the bundle
# has it. (No type hints: Spark would try to read them as a pandas UDF's.)


@udf(returnType=StringType())
def normalize(word):  # type: ignore[no-untyped-def]
    import sparkjob

    return sparkjob.normalize(word)


@udf(returnType=StringType())
def where(_):  # type: ignore[no-untyped-def]
    import sparkjob

    return json.dumps({**sparkjob.where(), "spark_files": SparkFiles.getRootDirectory()})


def main(argv: list[str]) -> int:
    text = " ".join(argv) or "Élan elan ÉLAN spark"
    spark = (
        SparkSession.builder.appName("shipenv-sparkjob")
        .config("spark.sql.shuffle.partitions", "2")  # a few words, not 200 partitions' worth
        .getOrCreate()
    )
    try:
        words = spark.createDataFrame([(w,) for w in text.split()], ["word"])
        counts = words.groupBy(normalize("word").alias("word")).count().collect()
        partitions = spark.sparkContext.defaultParallelism
        places = spark.range(partitions, numPartitions=partitions).select(where("id").alias("w")).collect()
    finally:
        spark.stop()
    print(json.dumps({
        "counts": {row["word"]: row["count"] for row in counts},
        "executors": [json.loads(row["w"]) for row in places],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
