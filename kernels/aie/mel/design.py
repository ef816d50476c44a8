"""IRON design: Whisper's log-mel front end for one 30 s window (3000 frames, padded to 3008).

The shim DMA frames the reflect-padded samples (400 samples every 160: a strided access
pattern, no copy on the host); the core runs mel_frames_64 on 64 frames at a time with the
Hann window, the [cos | -sin] DFT matrix and the transposed mel filters resident in the
memory tile, writes fp32 log energies, and a second pass (mel_finish) applies the window's
maximum. Not compiled here (no MLIR-AIE toolchain).
As written it needs 955,904 bytes of a core's 65,536:
the constants must stay in the memory tile (kernels/aie/iron_host.py).
"""
import argparse

import numpy as np

N_FFT, HOP, FRAMES, TILE = 400, 160, 3008, 64
BINS = N_FFT // 2 + 1


def amanuensis_mel(dev, n_mels: int):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.placers import SequentialPlacer

    f32 = np.dtype[np.float32]
    frames_ty = np.ndarray[(TILE * N_FFT,), f32]
    hann_ty, dft_ty = np.ndarray[(N_FFT,), f32], np.ndarray[(N_FFT * 2 * BINS,), f32]
    filt_ty, out_ty = np.ndarray[(BINS * n_mels,), f32], np.ndarray[(TILE * n_mels,), f32]
    of_frames, of_out = ObjectFifo(frames_ty, name="frames"), ObjectFifo(out_ty, name="logmel")
    constants = ((hann_ty, "hann"), (dft_ty, "dft"), (filt_ty, "filters"))
    of_hann, of_dft, of_filt = (ObjectFifo(t, name=n, depth=1) for t, n in constants)
    frames_kernel = Kernel("mel_frames_64", "mel.o", [frames_ty, hann_ty, dft_ty, filt_ty, np.int32, out_ty])

    def core(frames, hann, dft, filt, out, kernel):
        th, td, tf = hann.acquire(1), dft.acquire(1), filt.acquire(1)
        for _ in range_(FRAMES // TILE):
            tin, tout = frames.acquire(1), out.acquire(1)
            kernel(tin, th, td, tf, n_mels, tout)
            frames.release(1)
            out.release(1)
        hann.release(1)
        dft.release(1)
        filt.release(1)

    worker = Worker(core, [of_frames.cons(), of_hann.cons(), of_dft.cons(), of_filt.cons(), of_out.prod(),
                           frames_kernel], while_true=False)
    samples = (FRAMES - 1) * HOP + N_FFT
    rt = Runtime()
    audio_ty, logmel_ty = np.ndarray[(samples,), f32], np.ndarray[(FRAMES * n_mels,), f32]
    with rt.sequence(audio_ty, hann_ty, dft_ty, filt_ty, logmel_ty) as (x, h, d, f, y):
        rt.start(worker)
        rt.fill(of_hann.prod(), h)
        rt.fill(of_dft.prod(), d)
        rt.fill(of_filt.prod(), f)
        # overlapping frames straight from the sample stream: FRAMES x 400, stride 160
        rt.fill(of_frames.prod(), x, TensorAccessPattern((1, samples), 0, [1, 1, FRAMES, N_FFT], [0, 0, HOP, 1]))
        rt.drain(of_out.cons(), y, wait=True)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-m", "--mels", type=int, default=80, help="80, or 128 for large-v3")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    print(amanuensis_mel(NPU1() if args.device == "npu" else NPU2(), args.mels))


if __name__ == "__main__":
    main()
