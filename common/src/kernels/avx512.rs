//! The `avx2` set's two register-blocked kernels again, on 512-bit
//! registers, for CPUs with AVX-512 (F and DQ): the same bits, because
//! neither kernel sums across the lanes of a register before the end.
//! - `∇w = δ · xᵀ`: every output is its own FMA chain over the samples, in
//!   one lane; 16 lanes instead of 8 just compute 16 outputs at once.
//! - `z = w · x`: each output keeps its 8 partial sums (term `c` into
//!   partial `c mod 8`) in the 8 lanes of a 256-bit register; here one
//!   512-bit register holds two rows' 8 partial sums side by side, which
//!   are added exactly as the AVX2 kernel adds them.
//!
//! Chosen at run time ([`available`]) and only then; `DDP_NO_AVX512=1` in
//! the environment turns it off (to compare, or where it would downclock).

use std::arch::x86_64::{
    __m512, _mm256_loadu_ps, _mm512_broadcast_f32x8, _mm512_castps256_ps512, _mm512_fmadd_ps,
    _mm512_insertf32x8, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm512_sub_ps,
};
use std::sync::OnceLock;

use super::{Descend, Operands, COLS, GRAD_ROWS, LANES};

/// Whether this CPU has AVX-512 F and DQ (and FMA), and the environment
/// does not turn the wide kernels off with `DDP_NO_AVX512=1`.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("fma")
            && std::env::var_os("DDP_NO_AVX512").is_none_or(|v| v != "1")
    })
}

/// Lanes of a 512-bit register.
const WIDE_LANES: usize = 16;
/// Output columns per block of the gradient kernel: two registers.
const WIDE: usize = 2 * WIDE_LANES;

// `fma::delta_dot_xt`'s blocks, 32 columns at a time, the last ones masked.
delta_dot_xt_by_row_blocks!("avx512f,avx512dq,fma");

/// The first `width` lanes (at most 16) of a mask.
fn mask(width: usize) -> u16 {
    match width {
        0 => 0,
        w if w >= WIDE_LANES => u16::MAX,
        w => (1u16 << w) - 1,
    }
}

/// Rows `j..j+R` of `out`, 32 columns at a time: `2·R` accumulators.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
unsafe fn rows<const R: usize>(ops: Operands, j: usize, out: &mut [f32], descend: Option<Descend>) {
    let Operands { a: d, x, k, n } = ops;
    let (dp, xp, op) = (d.as_ptr(), x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < k {
        let m0 = mask(k - i);
        let m1 = mask((k - i).saturating_sub(WIDE_LANES));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for s in 0..n {
            let b0 = _mm512_maskz_loadu_ps(m0, xp.add(s * k + i));
            let b1 = _mm512_maskz_loadu_ps(m1, xp.add(s * k + i + WIDE_LANES));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*dp.add((j + r) * n + s));
                acc_r[0] = _mm512_fmadd_ps(a, b0, acc_r[0]);
                acc_r[1] = _mm512_fmadd_ps(a, b1, acc_r[1]);
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            put(op.add((j + r) * k + i), m0, acc_r[0], descend);
            put(op.add((j + r) * k + i + WIDE_LANES), m1, acc_r[1], descend);
        }
        i += WIDE;
    }
}

/// Stores the sums `g` at `o` (lanes in `mask`), or applies them to the
/// weights there as `Descend::scalar` does.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
unsafe fn put(o: *mut f32, mask: u16, g: __m512, descend: Option<Descend>) {
    if mask == 0 {
        return;
    }
    let v = match descend {
        None => g,
        Some(Descend { rate, decay }) => {
            let step = _mm512_mul_ps(_mm512_set1_ps(rate), g);
            let w = _mm512_maskz_loadu_ps(mask, o);
            match decay {
                None => _mm512_sub_ps(w, step),
                Some(decay) => _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(decay), w), step),
            }
        }
    };
    _mm512_mask_storeu_ps(o, mask, v);
}

/// Row pairs per block of the forward kernel (4 rows).
const PAIRS: usize = 2;

/// `z (m, n) = w (m, k) · x` as `fma::w_dot_x` computes it: rows in pairs,
/// one 512-bit register per pair and sample; an odd last row is paired with
/// itself (computed twice, stored once).
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub(super) unsafe fn w_dot_x(w: &[f32], x: &[f32], m: usize, k: usize, n: usize, z: &mut [f32]) {
    assert!(w.len() >= m * k && x.len() >= n * k && z.len() >= m * n);
    let ops = Operands { a: w, x, k, n };
    for j in (0..m).step_by(2 * PAIRS) {
        for s in (0..n).step_by(COLS) {
            match (m - j > 2, COLS.min(n - s)) {
                (true, 5) => block::<2, 5>(ops, m, j, s, z),
                (true, 4) => block::<2, 4>(ops, m, j, s, z),
                (true, 3) => block::<2, 3>(ops, m, j, s, z),
                (true, 2) => block::<2, 2>(ops, m, j, s, z),
                (true, _) => block::<2, 1>(ops, m, j, s, z),
                (false, 5) => block::<1, 5>(ops, m, j, s, z),
                (false, 4) => block::<1, 4>(ops, m, j, s, z),
                (false, 3) => block::<1, 3>(ops, m, j, s, z),
                (false, 2) => block::<1, 2>(ops, m, j, s, z),
                (false, _) => block::<1, 1>(ops, m, j, s, z),
            }
        }
    }
}

/// Row pairs `j..j+2P` of `z` (rows past `m` clamped to the last),
/// columns `s..s+C`: `P·C` accumulators of two rows' partial sums each.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn block<const P: usize, const C: usize>(
    ops: Operands,
    m: usize,
    j: usize,
    s: usize,
    z: &mut [f32],
) {
    let Operands { a: w, x, k, n } = ops;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let row = |i: usize| (j + i).min(m - 1);
    let body = k / LANES * LANES;
    let mut acc = [[_mm512_setzero_ps(); C]; P];
    let mut c = 0;
    while c < body {
        let mut a = [_mm512_setzero_ps(); P];
        for (p, a_p) in a.iter_mut().enumerate() {
            let lo = _mm256_loadu_ps(wp.add(row(2 * p) * k + c));
            let hi = _mm256_loadu_ps(wp.add(row(2 * p + 1) * k + c));
            *a_p = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi);
        }
        for q in 0..C {
            let b = _mm512_broadcast_f32x8(_mm256_loadu_ps(xp.add((s + q) * k + c)));
            for p in 0..P {
                acc[p][q] = _mm512_fmadd_ps(a[p], b, acc[p][q]);
            }
        }
        c += LANES;
    }
    for (p, acc_p) in acc.iter().enumerate() {
        for (q, acc_pq) in acc_p.iter().enumerate() {
            let mut lanes = [0.0f32; WIDE_LANES];
            _mm512_storeu_ps(lanes.as_mut_ptr(), *acc_pq);
            for (half, partial) in lanes.chunks_exact(LANES).enumerate() {
                let r = j + 2 * p + half;
                if r >= m {
                    continue;
                }
                // as fma::lane_sum, then the tail
                let mut sum: f32 = partial.iter().sum();
                for c in body..k {
                    sum = w[r * k + c].mul_add(x[(s + q) * k + c], sum);
                }
                z[r * n + s + q] = sum;
            }
        }
    }
}
