# Shared rules for one kernel folder: compile the kernel for the AIE with Peano, generate the
# design's MLIR with its IRON script, and link both into an xclbin + instruction stream with
# aiecc.py. Artifact names carry the kernel, tile shape and problem size.
#
#   make DEVICE=npu    # XDNA (Phoenix, Hawk Point): aie2, 4 columns
#   make DEVICE=npu2   # XDNA2 (Strix): aie2p, 8 columns
# Needs: PEANO_INSTALL_DIR (llvm-aie), the mlir-aie Python package (aiecc.py, aie.iron) and
# MLIR_AIE_INCLUDE (aie_api headers). See ../README.md.

DEVICE ?= npu
AIE_TARGET := $(if $(filter npu2,$(DEVICE)),aie2p,aie2)
PEANO_CXX ?= $(PEANO_INSTALL_DIR)/bin/clang++
PEANO_FLAGS = -O2 -std=c++20 --target=$(AIE_TARGET)-none-unknown-elf -ffp-contract=off -DNDEBUG \
              $(if $(MLIR_AIE_INCLUDE),-I $(MLIR_AIE_INCLUDE),)
# KERNEL_NAME, KERNEL_ID: the design's kernel in the xclbin; XCLBIN_INPUT: an xclbin to extend with it
# (python -m encoder.npu_build appends every design of a model to one xclbin this way).
KERNEL_NAME ?= MLIR_AIE
KERNEL_ID ?= 0x901
XCLBIN_INPUT ?=
AIECC_FLAGS = --aie-generate-xclbin --aie-generate-npu-insts --no-compile-host --no-xchesscc --no-xbridge \
              --xclbin-kernel-name=$(KERNEL_NAME) --xclbin-kernel-id=$(KERNEL_ID) \
              --xclbin-instance-name=$(KERNEL_NAME)_INST $(if $(XCLBIN_INPUT),--xclbin-input=$(XCLBIN_INPUT),)

# OBJECT: the object file the design's Kernel(...) declarations name (aiecc.py links it from build/).
build/$(OBJECT): $(SOURCE) $(wildcard ../common/*.h)
	mkdir -p build
	$(PEANO_CXX) $(PEANO_FLAGS) -c $< -o $@

build/$(ARTIFACT).mlir: design.py
	mkdir -p build
	python3 design.py -d $(DEVICE) $(DESIGN_ARGS) > $@

build/$(ARTIFACT).xclbin: build/$(ARTIFACT).mlir build/$(OBJECT)
	cd build && aiecc.py $(AIECC_FLAGS) --xclbin-name=$(ARTIFACT).xclbin \
	    --npu-insts-name=$(ARTIFACT).insts.bin $(ARTIFACT).mlir

.PHONY: all clean
all: build/$(ARTIFACT).xclbin

clean:
	rm -rf build
