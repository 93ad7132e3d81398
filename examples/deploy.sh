#!/bin/sh
# An example rolling deploy: meshrun uploads this once per host and runs it in the
# host's workdir, with MESHRUN_HOST and MESHRUN_RUN_ID set.
set -eu
release=${1:?usage: deploy.sh RELEASE}
mkdir -p releases
echo "$release" > "releases/$release.txt"
ln -sfn "releases/$release.txt" current
echo "deployed $release on $(hostname) (meshrun host $MESHRUN_HOST, run $MESHRUN_RUN_ID)"
