#!/usr/bin/env bash
# The whole test suite as `make test` runs it: two pytest processes at once.
#
#   scripts/run-tests.sh [PYTHON]
#
# The Slurm integration tests and the multi-node cluster tests spend most of their time waiting on
# Slurm's and Ray's clocks (time limits checked every 30 s, requeues, KillWait, health checks) with
# at most one core busy; the rest of the suite is CPU-bound. Run one after the other they left a core
# idle for ~15 minutes and took over an hour on 2 cores; side by side the waiting overlaps the work.
# The two groups share no service: the single-node Slurm is used only by the first, the namespaced
# clusters have their own subnets and state directories, the local Ray its own temp dir.
#
# The clusters group's lines are prefixed "[clusters] ". The exit status is the first nonzero one of
# (rest, clusters), so pytest's 5 ("no tests collected") still reaches .ci/run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}

WAITING=(tests/test_slurm_integration.py tests/test_cluster.py tests/test_cluster_slurm.py)
IGNORE=()
for f in "${WAITING[@]}"; do IGNORE+=(--ignore "$f"); done

rcdir=$(mktemp -d)
trap 'rm -rf "$rcdir"' EXIT
start=$SECONDS
# In a script without job control this background job stays in the foreground process group, so
# a Ctrl-C reaches both pytests.
{
    "$PY" -m pytest "${WAITING[@]}" 2>&1
    echo $? >"$rcdir/clusters"
    echo "$((SECONDS - start))" >"$rcdir/clusters.s"
} | sed -u 's/^/[clusters] /' &
group=$!

"$PY" -m pytest "${IGNORE[@]}"
rest=$?
rest_s=$((SECONDS - start))
wait "$group"
clusters=$(cat "$rcdir/clusters" 2>/dev/null || echo 1)
clusters_s=$(cat "$rcdir/clusters.s" 2>/dev/null || echo "?")

echo "make test: the rest exited $rest after ${rest_s} s; the Slurm and cluster tests exited" \
    "$clusters after ${clusters_s} s (${WAITING[*]})"
if [ "$rest" -ne 0 ]; then exit "$rest"; fi
exit "$clusters"
