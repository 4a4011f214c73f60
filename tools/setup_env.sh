#!/usr/bin/env bash
# Creates (once) and links the project's virtual environment: `.venv` in the repository root is a
# symlink to a cached environment outside the repository, so fresh clones on this machine reuse it.
# A second run with unchanged requirements installs nothing.
#
# Environment knobs:
#   SPANET_MM_CACHE  cache root (default ~/.cache/spanet_mm): the venv and the mmcv wheels built here
#   PYTHON           interpreter to create the venv with (default python3.11)
# `tools/setup_env.sh --check` only asserts that the environment imports this checkout's package
# from any working directory (.ci/run does before the tests).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd -P)
cache=${SPANET_MM_CACHE:-$HOME/.cache/spanet_mm}
python=${PYTHON:-python3.11}
venv=$cache/venv-py311
shared_wheels=$repo/../shared/wheels
stamp_file=$venv/.spanet_mm_stamp
# Present from the start of a build or update until it completes ("first" or "update"): found by
# a later run, it marks one that was interrupted or failed. An unfinished first build, or any with
# a broken pip (a killed self-upgrade), is removed and built again; an update is redone in place.
building_file=$venv/.spanet_mm_building
lock_file=$cache/.setup_env.lock

stamp=$(cat "$repo"/requirements/*.txt "$repo/setup.py" "$0" | sha256sum | cut -d' ' -f1)
link_venv() { ln -sfn "$venv" "$repo/.venv"; }

install_project() {
    # Editable install of this checkout. Cheap, and re-done when the venv serves another clone.
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo"
}

installed_from() {
    # The checkout that `import spanet_mm` loads from outside any checkout (as subprocesses,
    # the converter and the toolboxes' own tools do): from /, so the current directory on
    # sys.path cannot answer for the installed package.
    (cd / && "$venv/bin/python" -c 'import os, spanet_mm
print(os.path.dirname(os.path.dirname(os.path.realpath(spanet_mm.__file__))))' 2>/dev/null) || true
}

serve_this_clone() {
    [ "$(installed_from)" = "$repo" ] || install_project
    local where
    where=$(installed_from)
    if [ "$where" != "$repo" ]; then
        echo "[setup_env] ERROR: the environment imports spanet_mm from '${where:-nowhere}'," \
             "not from $repo. Remove $venv and run 'make env' again." >&2
        exit 1
    fi
}

if [ "${1:-}" = "--check" ]; then  # only assert that the environment serves this clone
    where=$(installed_from)
    if [ "$where" != "$repo" ]; then
        echo "ERROR: $repo/.venv imports spanet_mm from '${where:-nowhere}', not from this" \
             "checkout: tests would run other code. Run 'make env' in $repo." >&2
        exit 1
    fi
    echo "[setup_env] the environment serves $repo"
    exit 0
fi

# One set-up at a time per cache (clones on one machine share the environment): a second run
# waits for the first, then finds the environment ready. pip and the compilers inherit fd 9 on
# purpose: if this script is killed while one of them still writes into the venv, the lock is
# held until it exits. `--check` (above) takes no lock: it only reads, and .ci/run calls it after
# its own set-up has finished.
mkdir -p "$cache"
if command -v flock >/dev/null; then
    exec 9>"$lock_file"
    if ! flock -n 9; then
        echo "[setup_env] waiting for another set-up of $venv to finish (lock: $lock_file)"
        flock 9
    fi
else
    echo "[setup_env] WARNING: no flock here: concurrent set-ups of $venv are not serialized" >&2
fi

if [ -e "$building_file" ]; then
    if [ "$(cat "$building_file")" = first ] \
            || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "[setup_env] $venv is an unfinished first set-up or has a broken pip" \
             "(interrupted): removing it to start over"
        rm -f "$stamp_file"  # first: a half-removed venv must not look finished
        rm -rf "$venv"
    else
        echo "[setup_env] the last update of $venv did not finish: doing it again"
    fi
fi

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    link_venv
    serve_this_clone
    exit 0
fi

echo "[setup_env] building the environment in $venv (first run: several minutes)"
if [ -x "$venv/bin/python" ]; then build=update; else build=first; fi
mkdir -p "$venv"
rm -f "$stamp_file"  # until this build completes, the environment is not the stamped one
echo "$build" > "$building_file"
[ "$build" = update ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade "pip<27" "setuptools<81" wheel
"${pip[@]}" install -q torch==2.14.1 torchvision==0.29.1 "setuptools<81"

torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
wheel_dir=$cache/wheels/torch-$torch_version

# mmcv's own dependencies first, so that a wheel installed with --no-deps can be checked at once.
"${pip[@]}" install -q mmengine==0.10.7 addict packaging Pillow pyyaml yapf

mmcv_ops_ok() { "$venv/bin/python" -c 'from mmcv.ops import nms, RoIAlign' >/dev/null 2>&1; }

install_mmcv_from() {
    # --no-index: only the given folder; --no-deps: its dependencies come with the requirements.
    "${pip[@]}" install -q --no-index --no-deps --force-reinstall --find-links "$1" mmcv==2.1.0 \
        && mmcv_ops_ok
}

if ! mmcv_ops_ok; then
    # mmcv 2.1.0 is an sdist with C++ ops that must match the installed torch. pip's own wheel cache
    # does not know which torch a wheel was built for, so we keep built wheels per torch version.
    if [ -d "$wheel_dir" ] && install_mmcv_from "$wheel_dir"; then
        echo "[setup_env] mmcv from $wheel_dir"
    elif [ -d "$shared_wheels" ] && install_mmcv_from "$shared_wheels"; then
        echo "[setup_env] mmcv from $shared_wheels"
    else
        echo "[setup_env] building mmcv 2.1.0 against torch $torch_version (about 40 minutes on 2 cores)"
        "${pip[@]}" uninstall -q -y mmcv || true
        "${pip[@]}" install -q ninja
        mkdir -p "$wheel_dir" "$cache/bin"
        # torch >= 2.10 headers need C++20; mmcv's setup.py passes -std=c++17. Swap the flag.
        cat > "$cache/bin/cxx20" <<'WRAP'
#!/usr/bin/env bash
args=()
for a in "$@"; do [ "$a" = "-std=c++17" ] && a="-std=c++20"; args+=("$a"); done
exec g++ "${args[@]}"
WRAP
        chmod +x "$cache/bin/cxx20"
        PATH="$venv/bin:$PATH" CXX="$cache/bin/cxx20" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
            "${pip[@]}" wheel --no-cache-dir --no-deps --no-build-isolation --no-binary mmcv \
            -w "$wheel_dir" mmcv==2.1.0
        install_mmcv_from "$wheel_dir" || { echo "[setup_env] mmcv built but its ops do not import" >&2; exit 1; }
    fi
fi

"${pip[@]}" install -q -r "$repo/requirements/runtime.txt" -r "$repo/requirements/tests.txt"
serve_this_clone
mmcv_ops_ok || { echo "[setup_env] mmcv ops do not import after the install" >&2; exit 1; }
echo "$stamp" > "$stamp_file"
rm -f "$building_file"
link_venv
echo "[setup_env] ready: $repo/.venv -> $venv"
