#!/bin/sh
# Installs the image's runtime requirements into the virtual environment /opt/venv, then removes
# what nothing runs (the build stage calls it; see the Dockerfile).
#   container/install.sh EXTRAS TENSORFLOW [MORE_REQUIREMENTS...]
# EXTRAS: pyproject.toml extras, comma-separated; TENSORFLOW: the distribution that provides
# TensorFlow ('' for none); MORE_REQUIREMENTS: extra pip requirements (jax[cuda13]).
set -eu
extras=$1 tensorflow=$2
shift 2
python3 "$(dirname "$0")/requirements.py" "$extras" --tensorflow "$tensorflow" > /tmp/requirements.txt
# pip before 24.2 trusts only its own copy of the CA list: pointing it at the system's lets a build
# behind a proxy with its own CA mount that CA's bundle there (docs/container.md).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
/opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt "$@"
# libclang (62 MB) is a dependency of TensorFlow that only its packaging scripts use; pip and
# setuptools are not needed once the environment is made.
/opt/venv/bin/pip uninstall --yes libclang pip setuptools
site=$(echo /opt/venv/lib/python3*/site-packages)
# TensorFlow's C++ headers (287 MB) are for compiling custom ops; the packages' own test suites
# (numpy, scipy, pandas, scikit-learn: 120 MB) for testing them.
rm -rf "$site/tensorflow/include"
find "$site" -depth -type d -name tests -exec rm -rf {} +
# TensorFlow's libraries, built by Bazel, ship with their symbol tables (250 of its 970 MB): strip
# them. Only them: strip can corrupt libraries that auditwheel rewrote with patchelf (numpy's,
# scipy's), and JAX's CUDA plugin, checked only on a machine without a GPU, stays as shipped.
if [ -d "$site/tensorflow" ]; then
    find "$site/tensorflow" -type f -name "*.so*" -exec strip --strip-unneeded {} +
fi
rm /tmp/requirements.txt
