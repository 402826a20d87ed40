#!/bin/bash
# Sets up md4 (google-deepmind/md4 @ b9fbf292) in its own virtualenv for md4_bench.py; md4
# is not a dependency of dllm_jax. Usage:
#   bash install_md4.sh MD4_GIT_DIR OUT_DIR     # MD4_GIT_DIR: a clone (or mirror) of md4
# creates OUT_DIR/md4src (the source tree) and OUT_DIR/venv.
set -e
G=${1:?a git clone of google-deepmind/md4}; OUT=${2:?an output folder}
rm -rf "$OUT/md4src" && mkdir -p "$OUT/md4src"
# a mirror may lack image blobs (imgs/*.gif): archive only the other files
git -C "$G" archive b9fbf29216f818cccff46cb5727199f86f35593e $(git -C "$G" ls-tree -r --name-only HEAD | grep -v -E '\.(gif|png|jpg)$') | tar -x -C "$OUT/md4src"
python3.11 -m venv "$OUT/venv"
P="$OUT/venv/bin/pip"
PIN='jax==0.10.2 jaxlib==0.10.2 flax==0.12.8'
$P install "jax==0.10.2" "jaxlib==0.10.2" "flax==0.12.8" "optax==0.2.8" "chex==0.1.92" ml_collections
# tensorflow-probability 0.25.0 (release) fails with jax 0.10 (jax.interpreters.xla.pytype_aval_mappings gone)
$P install tfp-nightly $PIN            # got 0.26.0.dev20261027
$P install --no-deps distrax           # md4/utils.py imports it; --no-deps so it doesn't pull release tfp
$P install clu matplotlib seaborn orbax-checkpoint absl-py grain $PIN   # md4/utils.py + md4/train.py imports
$P check
