"""Cycle estimates of the vectorised kernels per call: the one table the schedule projection reads.

Each number is derived in the header of its source (kernels/aie/*/*_vec.cc: instruction counts of
the matrix unit, loads and stores, and ~15 instructions per emulated fp32 multiply) and has not been
measured: nothing here has run on an AIE. tests/test_cost.py checks that each source states the
number given here.
"""
from __future__ import annotations

MATMUL_64x64x32 = 1150          # mm_vec.cc: 1024 mmul instructions, operand loads hidden under them
ZERO_64x32 = 130
BIAS_64x32 = 400                # 128 blocks: load, add, store
BIAS_GELU_64x32 = 17000         # with GELU: 6 emulated fp32 multiplies and ~40 other instructions a block
ROUND_64x32 = 400
ADD_ROUND_64x32 = 650
ATTN_STEP = 15600               # attention_vec.cc: a key tile without rescaling, the exp ~67% of it
ATTN_RESCALE_BAND = 340         # and per 4-row band whose running maxima change at that tile
# The share of (band, key tile) steps that rescale, measured on 2026-12-03 with tiny.en (emu, all 4
# layers): 13-21% on the 18 real clips of ../shared/speech (windows mostly padding), 25-26% on three
# full 30 s windows of varied speech. The projection takes 0.26; 1 is the worst case.
ATTN_RESCALE_SHARE = 0.26
ATTN_INIT = 300
ATTN_FINISH = 7000
ATTN_V_LAYOUT = 600
ATTN_K_LAYOUT = 500
LAYERNORM_ROW_PER_16 = 55       # layernorm_vec.cc: per 16 values of a row, plus LAYERNORM_ROW
LAYERNORM_ROW = 150
LN_SUM_64x64 = 1300             # mm_vec.cc, the matmul design's layernorm phase: per 64 x 64 tile
LN_SQDEV_64x64 = 5400
LN_MEAN_64 = 2000               # per 64 rows
LN_RSTD_64 = 4000
LN_NORM_64x32 = 5000            # per 64 x 32 output tile
MEL_MATMUL_64x32x32 = 3700      # mel_vec.cc: fp32 on the bf16 unit, 6 piece products per K step
MEL_ZERO_64x32 = 130
MEL_POWER_64x32 = 2000
MEL_LOG10_MAX_64x32 = 28500     # log10: ~13 emulated fp32 multiplies per 16 values
MEL_MAXIMUM = 150               # melv_max_init, melv_max_out_64x32, melv_global_max
MEL_FINISH_64x32 = 3500


def kernel_cycles(name: str, args: tuple[int, ...], rescale_share: float = ATTN_RESCALE_SHARE) -> int:
    """Estimated cycles of one call of kernel `name` with these integer arguments (as the design passes
    them); an attention step's with `rescale_share` of its 16 bands rescaling."""
    if name == "attnv_step_64":
        return round(ATTN_STEP + 16 * rescale_share * ATTN_RESCALE_BAND)
    if name == "mmv_bias_act_64x32":
        return BIAS_GELU_64x32 if args[0] else BIAS_64x32
    if name == "layernormv_affine_bf16":
        rows, n = args
        return rows * (n // 16 * LAYERNORM_ROW_PER_16 + LAYERNORM_ROW)
    fixed = {"mmv_bf16_64x64x32": MATMUL_64x64x32, "mmv_zero_64x32": ZERO_64x32, "mmv_round_64x32": ROUND_64x32,
             "mmv_add_round_64x32": ADD_ROUND_64x32, "attnv_init": ATTN_INIT,
             "attnv_finish": ATTN_FINISH, "attnv_v_layout": ATTN_V_LAYOUT,
             "attnv_k_layout": ATTN_K_LAYOUT, "lnv_sum_64x64": LN_SUM_64x64,
             "lnv_sqdev_64x64": LN_SQDEV_64x64, "lnv_mean_64": LN_MEAN_64, "lnv_rstd_64": LN_RSTD_64,
             "lnv_norm_64x32": LN_NORM_64x32, "mmf_f32_64x32x32": MEL_MATMUL_64x32x32,
             "melv_zero_64x32": MEL_ZERO_64x32, "melv_power_64x32": MEL_POWER_64x32,
             "melv_log10_max_64x32": MEL_LOG10_MAX_64x32, "melv_max_init": MEL_MAXIMUM,
             "melv_max_out_64x32": MEL_MAXIMUM, "melv_global_max": MEL_MAXIMUM,
             "melv_finish_64x32": MEL_FINISH_64x32}
    if name not in fixed:
        raise KeyError(f"no cycle estimate for kernel {name}")
    return fixed[name]
