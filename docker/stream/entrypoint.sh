#!/bin/bash
# The driver's entry point: the Spark image's own (/opt/entrypoint.sh), except where SIGTERM goes.
# Kubernetes stops a pod by signalling its first process; the image's entry point passes that to
# the JVM, whose shutdown hooks stop Spark under the running query (an ERROR, exit 143). Here it
# goes to the Python app instead, which stops its query and Spark, then exits 0 (and the JVM
# with it). While no app process runs yet (spark-submit starting), it goes to the JVM as before.
set -u
child=
app_pids() {  # the app's Python process, started by Spark's PythonRunner: argv[1] = main file
  local proc argv
  for proc in /proc/[0-9]*; do
    mapfile -d '' -t argv 2>/dev/null <"$proc/cmdline" || continue
    if [[ ${#argv[@]} -ge 2 && ${argv[1]} == */iotpipe/stream/__main__.py ]]; then
      echo "${proc#/proc/}"
    fi
  done
}
forward() {
  local pids
  pids=$(app_pids)
  # shellcheck disable=SC2086  # one word per PID
  kill -TERM ${pids:-$child} 2>/dev/null
}
trap forward TERM INT  # before the child starts: PID 1 ignores signals it has no handler for

/opt/entrypoint.sh "$@" &
child=$!
while kill -0 "$child" 2>/dev/null; do
  wait "$child"  # returns early when a trapped signal arrives
done
wait "$child"  # the child's exit status (bash keeps it once reaped)
