#!/bin/bash
# Stand-in for the Spark image's /opt/entrypoint.sh, driver role only: `driver ARGS` runs
# spark-submit in client mode bound to SPARK_DRIVER_BIND_ADDRESS under tini, as the Spark
# Operator's driver pods do; any other command runs as given.
set -eo pipefail
if [ "${1:-}" = driver ]; then
  shift
  exec /usr/bin/tini -s -- "$SPARK_HOME/bin/spark-submit" \
    --conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS" \
    --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS" \
    --deploy-mode client "$@"
fi
exec "$@"
