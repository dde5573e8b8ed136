#!/bin/sh
# shipenv: bin/python-env of a --libc bundled bundle.
#
# bin/python${xy} through the bundled loader, with the caller's environment
# kept as it is: PYTHONPATH and PYTHONHOME are honoured (no -E, no -s). For
# tools that hand a Python its modules through the environment, such as Spark
# (spark.pyspark.python=./env/NAME-VERSION/bin/python-env). sys.executable is
# this file, so the workers such a tool forks and starts come back through it.
# locate.sh: $$d becomes the directory of this file, symlinks followed.
${locate}${through_loader_env}"$$d/python${xy}" "$$@"
echo "python-env: no bundled loader in $$d/../lib (this bundle was built with --libc host; run $$d/python${xy})" >&2
exit 127
