#!/usr/bin/env bash
# Run a command with oneMKL taking its Intel code path on an AMD CPU, to see what an Intel machine's
# matrix products would do to a run without having one:
#   scripts/intel_mkl_path.sh scripts/reproduce.sh --config ablations=quick
# oneMKL (linked into torch) picks its kernels by CPU vendor: on AMD it takes a generic path, on an
# Intel CPU with AVX-512 its AVX-512 path, and the two round sums differently. It asks the vendor through
# mkl_serv_intel_cpu_true(); a preloaded library that answers 1 makes it take the Intel path here (check:
# MKL_VERBOSE=1 names "AVX-512" instead of "Intel(R) Architecture processors"). Needs a C compiler.
# torch's own kernels and oneDNN are not affected: they choose by instruction set, not vendor.
set -euo pipefail
if [ $# -eq 0 ]; then echo "usage: scripts/intel_mkl_path.sh COMMAND [ARGS...]" >&2; exit 2; fi
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null; then
  echo "intel_mkl_path: needs a C compiler to build the preload library: '$cc' not found (apt-get install gcc)" >&2
  exit 2
fi
dir=${XDG_CACHE_HOME:-$HOME/.cache}/mae-harness
shim="$dir/mkl_intel_cpu.so"
if [ ! -f "$shim" ]; then
  mkdir -p "$dir"
  printf 'int mkl_serv_intel_cpu_true(void) { return 1; }\nint mkl_serv_intel_cpu(void) { return 1; }\n' \
    | "$cc" -shared -fPIC -O2 -x c -o "$shim.$$" -
  mv "$shim.$$" "$shim"
fi
export LD_PRELOAD="$shim${LD_PRELOAD:+:$LD_PRELOAD}"
exec "$@"
