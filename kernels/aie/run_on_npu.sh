#!/usr/bin/env bash
# Build Amanuensis's NPU kernels on a Ryzen AI laptop and measure them; writes one JSON report.
#
#   kernels/aie/run_on_npu.sh [OUT_DIR]          (default: ./npu-report)
#
# Needs: Linux with the amdxdna driver (/dev/accel/accel0), XRT with its Python binding (pyxrt,
# usually /opt/xilinx/xrt), python3 with venv, make, and internet access for the toolchain wheels.
# It creates a virtual environment in OUT_DIR, installs this checkout, the mlir-aie wheels (IRON,
# aiecc.py) and Peano (llvm-aie) as mlir-aie's getting-started guide does, builds the kernels tiny.en
# needs (python -m encoder.npu_build), then runs the start-up self-tests and a transcription, the
# layer parity against PyTorch and the encoder bench on the NPU and the CPU (cpu and cpu-bf16, and
# each native kernel on one thread). Every step's output lands in OUT_DIR; OUT_DIR/report.json
# gathers them. Send report.json (and build.json if the build failed).
# Nobody has run this script on an NPU yet: expect the first run to find problems, and report them.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$(mkdir -p "${1:-npu-report}" && cd "${1:-npu-report}" && pwd)"
MLIR_AIE_WHEELS="${MLIR_AIE_WHEELS:-https://github.com/Xilinx/mlir-aie/releases/expanded_assets/latest-wheels}"
LLVM_AIE_WHEELS="${LLVM_AIE_WHEELS:-https://github.com/Xilinx/llvm-aie/releases/expanded_assets/nightly}"
DEVICE="${AMANUENSIS_NPU_DEVICE:-}"           # npu (Phoenix/Hawk Point) or npu2 (Strix); found below if empty
CLIP="$ROOT/tests/data/hello.wav"
STEPS="$OUT/steps.tsv"
: > "$STEPS"

step() {   # step NAME COMMAND...: run, keep stdout/stderr in OUT_DIR/NAME.{out,err}, record the exit status
    local name="$1"; shift
    echo "== $name: $*" >&2
    "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    local status=$?
    printf '%s\t%s\n' "$name" "$status" >> "$STEPS"
    [ "$status" -eq 0 ] || echo "   $name failed (exit $status): see $OUT/$name.err" >&2
    return "$status"
}

# ---- the machine ----------------------------------------------------------------------------------
ls /dev/accel/accel* > "$OUT/accel.out" 2>&1 || { echo "no /dev/accel/accel*: is the amdxdna driver loaded?" >&2; exit 2; }
[ -f /opt/xilinx/xrt/setup.sh ] && source /opt/xilinx/xrt/setup.sh > /dev/null 2>&1
step xrt_examine xrt-smi examine
if [ -z "$DEVICE" ]; then
    if grep -qiE 'strix|krackan|npu[4-6]' "$OUT/xrt_examine.out"; then DEVICE=npu2; else DEVICE=npu; fi
fi
echo "device: $DEVICE" >&2

# ---- the environment: this checkout, the toolchain --------------------------------------------------
python3 -m venv --system-site-packages "$OUT/venv" || exit 2     # system packages: XRT's pyxrt
source "$OUT/venv/bin/activate"
step install_project python -m pip install -e "$ROOT[test]" || exit 2
step install_mlir_aie python -m pip install mlir_aie -f "$MLIR_AIE_WHEELS"
step install_llvm_aie python -m pip install llvm-aie -f "$LLVM_AIE_WHEELS"
export MLIR_AIE_INSTALL_DIR="$(python -m pip show mlir_aie 2>/dev/null | awk '/^Location:/ {print $2}')/mlir_aie"
export PEANO_INSTALL_DIR="$(python -m pip show llvm-aie 2>/dev/null | awk '/^Location:/ {print $2}')/llvm-aie"
export MLIR_AIE_INCLUDE="$MLIR_AIE_INSTALL_DIR/include"
export PATH="$MLIR_AIE_INSTALL_DIR/bin:$PATH"
export PYTHONPATH="$MLIR_AIE_INSTALL_DIR/python${PYTHONPATH:+:$PYTHONPATH}"
export AMANUENSIS_NPU_KERNELS="$OUT/kernels"
step pyxrt python -c "import pyxrt; print(pyxrt.__file__)"

# ---- build, then run on the NPU -------------------------------------------------------------------------
step build python -m encoder.npu_build --model tiny.en --device "$DEVICE" --out "$OUT/kernels"
step transcribe python -m encoder.transcribe "$CLIP" --device npu --profile -f json -o "$OUT/transcripts"
step parity python -m encoder.parity "$CLIP" --device npu --json
# cpu-bf16 too: this CPU's AVX512-BF16 products (Zen 4 and later), which have run on a Xeon only
step bench python -m encoder.bench --backends npu,cpu,cpu-bf16 --lengths 30 --memory-minutes '' --repeats 3 --json

# ---- the report --------------------------------------------------------------------------------------
python - "$OUT" "$DEVICE" <<'EOF'
import json, pathlib, platform, subprocess, sys, time

out, device = pathlib.Path(sys.argv[1]), sys.argv[2]

def text(name):
    p = out / name
    return p.read_text(errors="replace")[-20000:] if p.is_file() else None

def as_json(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None

def version(package):
    r = subprocess.run([sys.executable, "-m", "pip", "show", package], capture_output=True, text=True)
    return next((l.split(":", 1)[1].strip() for l in r.stdout.splitlines() if l.startswith("Version:")), None)

steps = dict(line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line)
transcript = next(iter(sorted((out / "transcripts").glob("*.json"))), None) if (out / "transcripts").is_dir() else None
report = {
    "format": "amanuensis-npu-report", "version": 1, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "device": device, "machine": {"platform": platform.platform(), "processor": platform.processor()},
    "xrt_examine": text("xrt_examine.out"),
    "versions": {p: version(p) for p in ("amanuensis", "mlir_aie", "llvm-aie")},
    "steps": {name: int(status) for name, status in steps.items()},
    "build": as_json("kernels/build.json"),
    "transcription": json.loads(transcript.read_text()) if transcript else None,
    "profile": text("transcribe.err"),
    "parity": as_json("parity.out"),
    "bench": as_json("bench.out"),
    "errors": {name: text(f"{name}.err") for name, status in steps.items() if status != "0"},
}
(out / "report.json").write_text(json.dumps(report, indent=1))
print(f"report: {out / 'report.json'}")
EOF
