//! The kernels, with AVX2 + FMA intrinsics: register-blocked so each
//! loaded vector feeds several multiply-adds. Sums run in a fixed order.

use std::arch::x86_64::{
    __m256, __m256i, _mm256_broadcast_ss, _mm256_cmpgt_epi32, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_maskload_ps, _mm256_maskstore_ps, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps,
    _mm256_setr_epi32, _mm256_setzero_ps, _mm256_storeu_ps, _mm256_sub_ps,
};

use ndarray::ArrayView2;

use super::{Descend, Operands, COLS, GRAD_ROWS, LANES, ROWS};

/// `z (m, n) = w (m, k) · x`, `x` as `n` contiguous columns of `k`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn w_dot_x(w: &[f32], x: &[f32], m: usize, k: usize, n: usize, z: &mut [f32]) {
    assert!(w.len() >= m * k && x.len() >= n * k && z.len() >= m * n);
    let ops = Operands { a: w, x, k, n };
    for j in (0..m).step_by(ROWS) {
        for s in (0..n).step_by(COLS) {
            match (ROWS.min(m - j), COLS.min(n - s)) {
                (2, 5) => block::<2, 5>(ops, j, s, z),
                (2, 4) => block::<2, 4>(ops, j, s, z),
                (2, 3) => block::<2, 3>(ops, j, s, z),
                (2, 2) => block::<2, 2>(ops, j, s, z),
                (2, _) => block::<2, 1>(ops, j, s, z),
                (_, 5) => block::<1, 5>(ops, j, s, z),
                (_, 4) => block::<1, 4>(ops, j, s, z),
                (_, 3) => block::<1, 3>(ops, j, s, z),
                (_, 2) => block::<1, 2>(ops, j, s, z),
                (_, _) => block::<1, 1>(ops, j, s, z),
            }
        }
    }
}

/// Adds the 8 lanes of `v` in lane order.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn lane_sum(v: __m256) -> f32 {
    let mut lanes = [0.0f32; LANES];
    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
    lanes.iter().sum()
}

/// Rows `j..j+R` of `z`, columns `s..s+C`: `R·C` accumulators.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block<const R: usize, const C: usize>(ops: Operands, j: usize, s: usize, z: &mut [f32]) {
    let Operands { a: w, x, k, n } = ops;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let body = k / LANES * LANES;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut c = 0;
    while c < body {
        let mut a = [_mm256_setzero_ps(); R];
        for (r, a_r) in a.iter_mut().enumerate() {
            *a_r = _mm256_loadu_ps(wp.add((j + r) * k + c));
        }
        for q in 0..C {
            let b = _mm256_loadu_ps(xp.add((s + q) * k + c));
            for r in 0..R {
                acc[r][q] = _mm256_fmadd_ps(a[r], b, acc[r][q]);
            }
        }
        c += LANES;
    }
    for r in 0..R {
        for q in 0..C {
            let mut sum = lane_sum(acc[r][q]);
            for c in body..k {
                sum = w[(j + r) * k + c].mul_add(x[(s + q) * k + c], sum);
            }
            z[(j + r) * n + s + q] = sum;
        }
    }
}

/// `out (m, n) = a (m, k) · b`, `b` as `k` contiguous rows of `n`:
/// each output one FMA chain over `p = 0..k` in order from 0.0
/// (vectorised across 8 outputs of a row, never within one output's
/// sum), 4 rows of `a` at a time.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn chain(a: &ArrayView2<f32>, b: &[f32], out: &mut [f32]) {
    let ((m, k), n) = (a.dim(), out.len() / a.nrows().max(1));
    assert!(b.len() >= k * n && out.len() >= m * n);
    let (rs, cs) = (a.strides()[0], a.strides()[1]);
    for i in (0..m).step_by(CHAIN_ROWS) {
        let a = a.as_ptr().offset(i as isize * rs);
        let out = out.as_mut_ptr().add(i * n);
        match CHAIN_ROWS.min(m - i) {
            4 => chain_rows::<4>(a, rs, cs, b, k, n, out),
            3 => chain_rows::<3>(a, rs, cs, b, k, n, out),
            2 => chain_rows::<2>(a, rs, cs, b, k, n, out),
            _ => chain_rows::<1>(a, rs, cs, b, k, n, out),
        }
    }
}

/// Rows of `a` per block of [`chain`].
const CHAIN_ROWS: usize = 4;

/// `R` rows of [`chain`]'s output from `a`'s rows at `a` (strides `rs`,
/// `cs`), 8 columns at a time, the last ones masked.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn chain_rows<const R: usize>(
    a: *const f32,
    rs: isize,
    cs: isize,
    b: &[f32],
    k: usize,
    n: usize,
    out: *mut f32,
) {
    let bp = b.as_ptr();
    let mut j = 0;
    while j < n {
        let width = LANES.min(n - j);
        let mask = lane_mask(width);
        let mut acc = [_mm256_setzero_ps(); R];
        for p in 0..k {
            let row = bp.add(p * n + j);
            let v = if width == LANES {
                _mm256_loadu_ps(row)
            } else {
                _mm256_maskload_ps(row, mask)
            };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let s = _mm256_broadcast_ss(&*a.offset(r as isize * rs + p as isize * cs));
                *acc_r = _mm256_fmadd_ps(s, v, *acc_r);
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let o = out.add(r * n + j);
            if width == LANES {
                _mm256_storeu_ps(o, *acc_r);
            } else {
                _mm256_maskstore_ps(o, mask, *acc_r);
            }
        }
        j += LANES;
    }
}

/// The first `width` lanes set.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn lane_mask(width: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), lanes)
}

/// Output columns per block: two registers.
const WIDE: usize = 2 * LANES;

delta_dot_xt_by_row_blocks!("avx2,fma");

/// Rows `j..j+R` of `out`, 16 columns at a time: `2·R` accumulators.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows<const R: usize>(ops: Operands, j: usize, out: &mut [f32], descend: Option<Descend>) {
    let Operands { a: d, x, k, n } = ops;
    let (dp, xp, op) = (d.as_ptr(), x.as_ptr(), out.as_mut_ptr());
    let body = k / WIDE * WIDE;
    let mut i = 0;
    while i < body {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for s in 0..n {
            let b0 = _mm256_loadu_ps(xp.add(s * k + i));
            let b1 = _mm256_loadu_ps(xp.add(s * k + i + LANES));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*dp.add((j + r) * n + s));
                acc_r[0] = _mm256_fmadd_ps(a, b0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(a, b1, acc_r[1]);
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            put(op.add((j + r) * k + i), acc_r[0], descend);
            put(op.add((j + r) * k + i + LANES), acc_r[1], descend);
        }
        i += WIDE;
    }
    for r in 0..R {
        for i in body..k {
            let mut sum = 0.0f32;
            for s in 0..n {
                sum = d[(j + r) * n + s].mul_add(x[s * k + i], sum);
            }
            let o = &mut out[(j + r) * k + i];
            *o = match descend {
                None => sum,
                Some(u) => u.scalar(*o, sum),
            };
        }
    }
}

/// Stores the 8 sums `g` at `o`, or applies them to the weights there.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn put(o: *mut f32, g: __m256, descend: Option<Descend>) {
    let v = match descend {
        None => g,
        Some(Descend { rate, decay }) => {
            let step = _mm256_mul_ps(_mm256_set1_ps(rate), g);
            let w = _mm256_loadu_ps(o);
            match decay {
                None => _mm256_sub_ps(w, step),
                Some(decay) => _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(decay), w), step),
            }
        }
    };
    _mm256_storeu_ps(o, v);
}
