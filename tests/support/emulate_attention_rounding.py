#!/usr/bin/env python3
"""The error the tensor-core attention backward (kernels/attention_mma.cu) makes by design, emulated
in float64 with numpy, to size the bounds of tests/test_cuda_attention.c.

The kernel takes delta_i = sum_d dO_id O_id from the output rounded to bf16 (as flash-attention
does) and rounds dS = P (dP - delta) to bf16 before dQ = scale dS K. For short rows (a few visible
keys) dP - delta cancels, so the rounding of O shows in dQ at a few percent of rms(dQ) on the worst
element. Run: python3 tests/support/emulate_attention_rounding.py"""
import numpy as np


def bf16(x):
    """Round to the nearest bf16 (ties to even), returned as float64."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def main():
    for variant in ["delta from rounded O", "dS rounded", "both (the kernel)"]:
        rng = np.random.default_rng(1)
        worst, norm = [], []
        for _ in range(200):
            T, D = 7, 64  # the failing shape of the test: short packed documents, head_dim 64
            q, k, v = (bf16(rng.uniform(-2, 2, (T, D))) for _ in range(3))
            do = bf16(rng.uniform(-1, 1, (T, D)))
            seg = np.cumsum(rng.uniform(size=T) < 0.1)
            sc = 1 / np.sqrt(D)
            vis = (np.arange(T)[None, :] <= np.arange(T)[:, None]) & (seg[None, :] == seg[:, None])
            S = np.where(vis, q @ k.T * sc, -np.inf)
            P = np.exp(S - S.max(1, keepdims=True))
            P /= P.sum(1, keepdims=True)
            O, dP = P @ v, do @ v.T
            delta = (P * dP).sum(1, keepdims=True)
            dq = sc * (P * (dP - delta)) @ k
            d = (do * bf16(O)).sum(1, keepdims=True) if variant != "dS rounded" else delta
            dS = P * (dP - d)
            if variant != "delta from rounded O":
                dS = bf16(dS)
            got = bf16(sc * dS @ k)
            rms = np.sqrt((dq ** 2).mean())
            worst.append((np.abs(got - dq) / (np.abs(dq) + rms)).max())
            norm.append(np.linalg.norm(got - dq) / np.linalg.norm(dq))
        print(f"{variant}: worst element / (|want| + rms) max {max(worst):.4f}, median {np.median(worst):.4f}; "
              f"relative norm error max {max(norm):.4f}")


if __name__ == "__main__":
    main()
