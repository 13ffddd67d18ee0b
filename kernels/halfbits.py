"""float16/bfloat16 <-> float32 bit conversions for numba kernels (no 16-bit float types needed).

Plain integer functions (ports of numpy's ``npy_halfbits_to_floatbits`` /
``npy_floatbits_to_halfbits`` with ties-to-even, and c10's bfloat16 ``round_to_nearest_even``),
so they run unchanged in plain Python, in the CUDA simulator and compiled as device functions.
All take and return non-negative Python/numba integers holding the bit pattern.
"""

from __future__ import annotations


def half_to_float_bits(h):
    """fp16 bits (0..0xFFFF) -> float32 bits (0..0xFFFFFFFF)."""
    h_exp = h & 0x7C00
    f_sgn = (h & 0x8000) << 16
    if h_exp == 0:  # zero or subnormal: normalise the significand
        h_sig = h & 0x03FF
        if h_sig == 0:
            return f_sgn
        h_sig = h_sig << 1
        while (h_sig & 0x0400) == 0:
            h_sig = h_sig << 1
            h_exp += 1
        return f_sgn + ((127 - 15 - h_exp) << 23) + ((h_sig & 0x03FF) << 13)
    if h_exp == 0x7C00:  # inf or nan
        return f_sgn + 0x7F800000 + ((h & 0x03FF) << 13)
    return f_sgn + (((h & 0x7FFF) + 0x1C000) << 13)


def float_to_half_bits(f):
    """float32 bits -> fp16 bits, round to nearest, ties to even."""
    f_exp = f & 0x7F800000
    h_sgn = (f & 0x80000000) >> 16
    if f_exp >= 0x47800000:  # overflow, inf or nan
        if f_exp == 0x7F800000 and (f & 0x007FFFFF) != 0:
            ret = 0x7C00 + ((f & 0x007FFFFF) >> 13)
            if ret == 0x7C00:
                ret += 1
            return h_sgn + ret
        return h_sgn + 0x7C00
    if f_exp <= 0x38000000:  # subnormal half or zero
        if f_exp < 0x33000000:
            return h_sgn
        e = f_exp >> 23
        f_sig = (0x00800000 + (f & 0x007FFFFF)) >> (113 - e)
        if (f_sig & 0x3FFF) != 0x1000 or (f & 0x07FF) != 0:
            f_sig += 0x1000
        return h_sgn + (f_sig >> 13)
    h_exp = (f_exp - 0x38000000) >> 13
    f_sig = f & 0x007FFFFF
    if (f_sig & 0x3FFF) != 0x1000:
        f_sig += 0x1000
    return h_sgn + h_exp + (f_sig >> 13)  # a carry out of the significand bumps the exponent


def bfloat_to_float_bits(b):
    return b << 16


def float_to_bfloat_bits(f):
    """float32 bits -> bfloat16 bits, round to nearest even; NaN -> the quiet NaN 0x7FC0."""
    if (f & 0x7FFFFFFF) > 0x7F800000:
        return 0x7FC0
    return ((f + 0x7FFF + ((f >> 16) & 1)) >> 16) & 0xFFFF
