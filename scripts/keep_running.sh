#!/usr/bin/env bash
# Runs a command and starts it again whenever it exits, until this script is stopped.
#
# honcho (`make run`) restarts nothing and stops every process as soon as one exits, so the Procfile
# runs the Celery worker under this loop: a worker that crashes or is killed comes back in 2 s while
# the web server keeps serving. SIGTERM or SIGINT to this script (honcho sends SIGTERM to the whole
# process group) stops the command and ends the loop.
set -u
stopping=0
child=0
trap 'stopping=1; [ "$child" -ne 0 ] && kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  "$@" &
  child=$!
  wait "$child"
  rc=$?
  # `wait` returns early when a trapped signal arrives: wait until the command has really ended.
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    rc=$?
  done
  [ "$stopping" -eq 1 ] && exit 0
  echo "$(date '+%F %T') $(basename "$1") exited with status $rc; starting it again in 2 s" >&2
  sleep 2 &
  wait $!
  [ "$stopping" -eq 1 ] && exit 0
done
