//! The products and the sigmoid of a step, in one of two kernel sets that a
//! run chooses once ([`KernelSet`]) and every process then computes with:
//! - forward, `z = w · x`;
//! - the weight gradient, `∇w = δ · xᵀ`;
//! - the backward product, `wᵀ · δ`;
//! - the sigmoid `1 / (1 + e^(−z))`.
//!
//! `x` is `(k, n)`, ideally with one contiguous column per sample (as
//! [`crate::dataset::Samples::inputs`] builds it).
//!
//! **`avx2`** (AVX2 + FMA, the fastest): for a mini-batch shard (n ≈ 1..10)
//! `ndarray`'s GEMM (matrixmultiply) spends more time packing `w` into
//! panels than multiplying, so the first layer's two big products run in
//! register-blocked AVX2+FMA loops: at n = 10, `[784, 30]`, 5.9 and 6.6 µs
//! where `dot` takes 20 and 11.5 µs (`cargo run --release -p common
//! --example kernels` prints both). Larger shards (more than
//! [`MAX_SAMPLES`]), non-contiguous inputs and the other products go to
//! matrixmultiply, which on a CPU with AVX2 and FMA always takes its FMA
//! kernel; the sigmoid uses the platform's `expf`. So every machine with
//! AVX2 and FMA computes the same bits.
//!
//! Each product also comes as an `_into` function that writes into a
//! caller's buffer ([`crate::workspace`] reuses them every step), with the
//! same bits: where the allocating function goes to matrixmultiply with an
//! inner dimension of at most [`CHAIN_MAX_INNER`], the `_into` one takes a
//! register-blocked FMA loop that computes what matrixmultiply's FMA kernel
//! does there, one FMA chain per output in inner order (tested bit for bit
//! against `dot` on 1,500 shapes and layouts); the gradient kernel can also
//! apply the plain update as it computes ([`delta_dot_xt_descend`]). On a
//! CPU with AVX-512 the two register-blocked kernels run on 512-bit
//! registers (`avx512`, chosen at run time), with the same bits: the set
//! stays `avx2`.
//!
//! **`portable`**: plain loops that add in a fixed order with separate
//! multiplies and adds (Rust never fuses or reorders them), and the
//! sigmoid's exponential from the pure-Rust `libm` crate instead of the
//! platform's. Only IEEE-754 `+ − × ÷` on f32 remain, so it gives the same
//! bits on any CPU and operating system, at several times the cost.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Rows of `w` per block of the forward kernel.
const ROWS: usize = 2;
/// Samples per block of the forward kernel.
const COLS: usize = 5;
/// f32 lanes of an AVX register.
const LANES: usize = 8;
/// Shards up to this many samples take the AVX2 kernels; larger ones go to
/// matrixmultiply, whose cache blocking wins there (at n = 100 the two tie).
pub const MAX_SAMPLES: usize = 64;

/// The code a run computes with. Chosen once per run by the coordinator and
/// sent to every worker, so every shard of a run is computed alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelSet {
    /// Fixed-order scalar loops and `libm`'s `expf`: the same bits everywhere.
    Portable,
    /// AVX2 + FMA kernels and matrixmultiply: the same bits on every x86-64
    /// CPU with AVX2 and FMA.
    Avx2,
}

impl KernelSet {
    /// Every set, in the order `--help` lists them.
    pub const ALL: [KernelSet; 2] = [KernelSet::Portable, KernelSet::Avx2];

    /// The fastest set this CPU can run.
    pub fn best() -> KernelSet {
        if KernelSet::Avx2.missing_feature().is_none() {
            KernelSet::Avx2
        } else {
            KernelSet::Portable
        }
    }

    /// The sets this CPU can run.
    pub fn supported() -> Vec<KernelSet> {
        KernelSet::ALL
            .into_iter()
            .filter(|k| k.missing_feature().is_none())
            .collect()
    }

    /// The CPU feature this set needs and this CPU lacks, if any.
    pub fn missing_feature(self) -> Option<&'static str> {
        match self {
            KernelSet::Portable => None,
            KernelSet::Avx2 => avx2_missing(),
        }
    }

    /// Its name on the command line and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Portable => "portable",
            KernelSet::Avx2 => "avx2",
        }
    }

    /// The set with this [`KernelSet::name`].
    pub fn from_name(name: &str) -> Option<KernelSet> {
        KernelSet::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether `n`-sample products may take the AVX2 kernels.
    fn fast_path(self, n: usize) -> bool {
        self == KernelSet::Avx2 && n <= MAX_SAMPLES
    }
}

impl std::fmt::Display for KernelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_missing() -> Option<&'static str> {
    if !std::arch::is_x86_feature_detected!("avx2") {
        Some("avx2")
    } else if !std::arch::is_x86_feature_detected!("fma") {
        Some("fma")
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_missing() -> Option<&'static str> {
    Some("avx2 (an x86-64 CPU)")
}

/// Panics unless this CPU can run `set`: computing with a set the CPU lacks
/// is a bug (workers refuse such runs at the handshake).
fn require(set: KernelSet) {
    if let Some(feature) = set.missing_feature() {
        panic!("kernel set {set} needs the CPU feature {feature}, which this CPU lacks");
    }
}

/// The columns of `x` as one slice (column `s` at `s * rows`), if they are contiguous.
fn columns<'a>(x: &ArrayView2<'a, f32>) -> Option<&'a [f32]> {
    let (rows, n) = x.dim();
    let column_major = x.strides() == [1, rows as isize] || n <= 1 && x.strides()[0] == 1;
    if column_major {
        x.to_slice_memory_order()
    } else {
        None
    }
}

/// `w · x` for `w` `(m, k)` and `x` `(k, n)`.
pub fn w_dot_x(set: KernelSet, w: &Array2<f32>, x: &ArrayView2<f32>) -> Array2<f32> {
    let ((m, k), n) = (w.dim(), x.ncols());
    if set == KernelSet::Portable {
        return portable::dot(&w.view(), x);
    }
    require(set);
    match (set.fast_path(n), w.as_slice(), columns(x)) {
        (true, Some(ws), Some(xs)) if x.nrows() == k => {
            let mut z = vec![0.0; m * n];
            // SAFETY: AVX2 and FMA are present (`require`); slices have the sizes named.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                (fast().0)(ws, xs, m, k, n, &mut z)
            };
            Array2::from_shape_vec((m, n), z).expect("m × n values")
        }
        _ => wide(w, x),
    }
}

/// `w · x` by matrixmultiply: the `avx2` set's products of many columns.
fn wide(w: &Array2<f32>, x: &ArrayView2<f32>) -> Array2<f32> {
    w.dot(x)
}

/// Whether a `whole`-column product [`w_dot_x`] may be computed a block of
/// columns at a time by [`w_dot_x_block`] with the same bits: each output
/// column of the portable products, and of matrixmultiply's (0.3: its
/// blocking over the inner dimension depends on that dimension alone, and
/// its edge tiles add as its full ones do), depends on its own column
/// alone; the AVX2 kernels of small products take other column groups
/// (`conv::tests` checks the products of chapter 6's conv layers).
pub fn columns_apart(set: KernelSet, whole: usize) -> bool {
    !set.fast_path(whole)
}

/// [`w_dot_x`] of a block `x` of the columns of a `whole`-column product
/// ([`columns_apart`]): each output column with its bits in the whole product.
///
/// # Panics
/// If the whole product's columns may not be computed apart and `x` is not all of them.
pub fn w_dot_x_block(
    set: KernelSet,
    w: &Array2<f32>,
    x: &ArrayView2<f32>,
    whole: usize,
) -> Array2<f32> {
    if columns_apart(set, whole) && set != KernelSet::Portable {
        require(set);
        return wide(w, x);
    }
    assert!(
        columns_apart(set, whole) || x.ncols() == whole,
        "a block of a product whose columns go together"
    );
    w_dot_x(set, w, x)
}

/// `δ · xᵀ` for `δ` `(m, n)` and `x` `(k, n)`: the summed weight gradient `(m, k)`.
pub fn delta_dot_xt(set: KernelSet, delta: &Array2<f32>, x: &ArrayView2<f32>) -> Array2<f32> {
    let ((m, n), k) = (delta.dim(), x.nrows());
    if set == KernelSet::Portable {
        return portable::dot(&delta.view(), &x.t());
    }
    require(set);
    match (set.fast_path(n), delta.as_slice(), columns(x)) {
        (true, Some(ds), Some(xs)) if x.ncols() == n => {
            let mut out = vec![0.0; m * k];
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                (fast().1)(ds, xs, m, k, n, &mut out, None)
            };
            Array2::from_shape_vec((m, k), out).expect("m × k values")
        }
        _ => delta.dot(&x.t()),
    }
}

/// `wᵀ · δ` for `w` `(m, k)` and `δ` `(m, n)`: the error sent back a layer, `(k, n)`.
pub fn wt_dot_delta(set: KernelSet, w: &Array2<f32>, delta: &Array2<f32>) -> Array2<f32> {
    match set {
        KernelSet::Portable => portable::dot(&w.t(), &delta.view()),
        KernelSet::Avx2 => {
            require(set);
            w.t().dot(delta)
        }
    }
}

/// The sigmoid `1 / (1 + e^(−z))`, elementwise, in place.
pub fn sigmoid(set: KernelSet, mut z: Array2<f32>) -> Array2<f32> {
    match set {
        KernelSet::Portable => z.mapv_inplace(|z| 1.0 / (1.0 + libm::expf(-z))),
        KernelSet::Avx2 => z.mapv_inplace(|z| 1.0 / (1.0 + (-z).exp())),
    }
    z
}

/// Inner dimensions up to this take `fma::chain` instead of matrixmultiply in
/// the `_into` products of the `avx2` set: matrixmultiply's FMA kernel
/// computes such a product (one `kc` block) as one FMA chain per output over
/// the inner index in ascending order, starting from 0.0, which is what
/// `fma::chain` computes (the tests check it bit for bit against `dot`).
pub const CHAIN_MAX_INNER: usize = 256;

/// `m × n` row-major output view over `out`.
fn out_view(out: &mut [f32], m: usize, n: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((m, n), &mut out[..m * n]).expect("output holds m × n values")
}

/// [`w_dot_x`] into `z` (`m × n`, row-major), allocating nothing in the
/// `avx2` set: the same bits. `scratch` holds copies some products need.
pub fn w_dot_x_into(
    set: KernelSet,
    w: &Array2<f32>,
    x: &ArrayView2<f32>,
    z: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let ((m, k), n) = (w.dim(), x.ncols());
    match (set.fast_path(n), w.as_slice(), columns(x)) {
        #[cfg(target_arch = "x86_64")]
        (true, Some(ws), Some(xs)) if x.nrows() == k => {
            require(set);
            // SAFETY: AVX2 and FMA are present (`require`); the kernels check the sizes.
            unsafe { (fast().0)(ws, xs, m, k, n, &mut z[..m * n]) }
        }
        _ => product_into(set, &w.view(), x, z, scratch),
    }
}

/// [`delta_dot_xt`] into `out` (`m × k`, row-major): the same bits.
pub fn delta_dot_xt_into(
    set: KernelSet,
    delta: &ArrayView2<f32>,
    x: &ArrayView2<f32>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let ((m, n), k) = (delta.dim(), x.nrows());
    match (set, delta.as_slice(), columns(x)) {
        // The fast path of `delta_dot_xt`, and beyond it up to
        // CHAIN_MAX_INNER samples, where matrixmultiply gives these bits too
        // (each output one FMA chain over the samples in order).
        #[cfg(target_arch = "x86_64")]
        (KernelSet::Avx2, Some(ds), Some(xs))
            if x.ncols() == n && n <= MAX_SAMPLES.max(CHAIN_MAX_INNER) =>
        {
            require(set);
            // SAFETY: as in `w_dot_x_into`.
            unsafe { (fast().1)(ds, xs, m, k, n, &mut out[..m * k], None) }
        }
        _ => product_into(set, delta, &x.t(), out, scratch),
    }
}

/// `w ← decay·w − rate·(δ · xᵀ)` (see [`Descend`]) without storing the
/// gradient, where [`delta_dot_xt_into`] would take the register-blocked
/// kernel; returns false, changing nothing, where it would not (the caller
/// then computes the gradient and updates as usual).
pub fn delta_dot_xt_descend(
    set: KernelSet,
    delta: &ArrayView2<f32>,
    x: &ArrayView2<f32>,
    w: &mut Array2<f32>,
    descend: Descend,
) -> bool {
    let ((m, n), k) = (delta.dim(), x.nrows());
    if set == KernelSet::Portable || w.dim() != (m, k) {
        return false;
    }
    require(set);
    match (delta.as_slice(), columns(x), w.as_slice_mut()) {
        // SAFETY: as in `delta_dot_xt_into`.
        #[cfg(target_arch = "x86_64")]
        (Some(ds), Some(xs), Some(ws))
            if x.ncols() == n && n <= MAX_SAMPLES.max(CHAIN_MAX_INNER) =>
        {
            unsafe { (fast().1)(ds, xs, m, k, n, ws, Some(descend)) };
            true
        }
        _ => false,
    }
}

/// [`wt_dot_delta`] into `out` (`k × n`, row-major): the same bits.
pub fn wt_dot_delta_into(
    set: KernelSet,
    w: &Array2<f32>,
    delta: &ArrayView2<f32>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    product_into(set, &w.t(), delta, out, scratch);
}

/// [`sigmoid`] in place on a buffer: the same bits.
pub fn sigmoid_in_place(set: KernelSet, z: &mut [f32]) {
    match set {
        KernelSet::Portable => z
            .iter_mut()
            .for_each(|z| *z = 1.0 / (1.0 + libm::expf(-*z))),
        KernelSet::Avx2 => z.iter_mut().for_each(|z| *z = 1.0 / (1.0 + (-*z).exp())),
    }
}

/// `a (m, k) · b (k, n)` into `out` (`m × n`, row-major) as the allocating
/// products compute it in `set`: the portable loops; in the `avx2` set,
/// [`chain`] for inner dimensions up to [`CHAIN_MAX_INNER`], matrixmultiply
/// beyond.
fn product_into(
    set: KernelSet,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    if set == KernelSet::Portable {
        out_view(out, m, n).assign(&portable::dot(a, b));
        return;
    }
    require(set);
    #[cfg(target_arch = "x86_64")]
    if k <= CHAIN_MAX_INNER && m * n > 0 {
        let rows = match (b.as_slice(), b.t().as_slice()) {
            (Some(rows), _) => rows,
            (None, Some(columns)) => {
                // b is column-major: transpose it into rows
                scratch.resize(k * n, 0.0);
                for (p, row) in scratch.chunks_exact_mut(n).enumerate() {
                    for (v, column) in row.iter_mut().zip(columns.chunks_exact(k)) {
                        *v = column[p];
                    }
                }
                scratch.as_slice()
            }
            (None, None) => {
                scratch.clear();
                scratch.extend(b.iter());
                scratch.as_slice()
            }
        };
        // SAFETY: FMA is present (`require`); `chain` checks the sizes.
        unsafe { fma::chain(a, rows, &mut out[..m * n]) };
        return;
    }
    let _ = scratch;
    ndarray::linalg::general_mat_mul(1.0, a, b, 0.0, &mut out_view(out, m, n));
}

/// `w · x` into `z`: `(w, x, m, k, n, z)`, as [`fma::w_dot_x`] documents.
#[cfg(target_arch = "x86_64")]
type WDotX = unsafe fn(&[f32], &[f32], usize, usize, usize, &mut [f32]);
/// `δ · xᵀ` into (or, with a [`Descend`], onto) `out`: `(δ, x, m, k, n, out,
/// descend)`, as [`fma::delta_dot_xt`] documents.
#[cfg(target_arch = "x86_64")]
type DeltaDotXt = unsafe fn(&[f32], &[f32], usize, usize, usize, &mut [f32], Option<Descend>);

/// The register-blocked kernels of the `avx2` set on this CPU: on 512-bit
/// registers where [`avx512::available`], else on 256-bit ones (the same
/// bits either way).
///
/// Calling them is unsafe: AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
fn fast() -> (WDotX, DeltaDotXt) {
    if avx512::available() {
        (avx512::w_dot_x, avx512::delta_dot_xt)
    } else {
        (fma::w_dot_x, fma::delta_dot_xt)
    }
}

/// Rows of `δ` per block of the gradient kernel.
#[cfg(target_arch = "x86_64")]
const GRAD_ROWS: usize = 4;

/// The operands of a kernel's block: `a`, row-major (`w`, `m × k`, for
/// `z = w · x`; `δ`, `m × n`, for `δ · xᵀ`), and `x` as `n` contiguous
/// columns of `k`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Operands<'a> {
    a: &'a [f32],
    x: &'a [f32],
    k: usize,
    n: usize,
}

/// Defines `delta_dot_xt` for an instruction set whose module has
/// `rows::<R>` (rows `j..j+R` of the output): the output in blocks of
/// [`GRAD_ROWS`] rows, the last block smaller. `$features` are the
/// instruction sets the module's kernels are compiled for.
#[cfg(target_arch = "x86_64")]
macro_rules! delta_dot_xt_by_row_blocks {
    ($features:literal) => {
        /// `out (m, k) = δ (m, n) · xᵀ`, `x` as `n` contiguous columns of
        /// `k`; each output is summed over the samples in order. With
        /// `descend`, `out` holds weights and each sum `g` goes straight into
        /// the update instead (see [`Descend`]).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn delta_dot_xt(
            d: &[f32],
            x: &[f32],
            m: usize,
            k: usize,
            n: usize,
            out: &mut [f32],
            descend: Option<Descend>,
        ) {
            assert!(d.len() >= m * n && x.len() >= n * k && out.len() >= m * k);
            for j in (0..m).step_by(GRAD_ROWS) {
                let ops = Operands { a: d, x, k, n };
                match GRAD_ROWS.min(m - j) {
                    4 => rows::<4>(ops, j, out, descend),
                    3 => rows::<3>(ops, j, out, descend),
                    2 => rows::<2>(ops, j, out, descend),
                    _ => rows::<1>(ops, j, out, descend),
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512;

mod portable;

#[cfg(target_arch = "x86_64")]
mod fma;

/// The plain update of one weight tensor, applied as its gradient is
/// computed: `w ← w − rate·g` ([`crate::network::Network::descend`]), or with
/// L2 `w ← decay·w − rate·g` ([`crate::optimizer::Update::apply`]): the
/// same multiplies and subtraction, in the same order, so the same bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Descend {
    /// `η / m`.
    pub rate: f32,
    /// `1 − η·λ/n`, or `None` without L2.
    pub decay: Option<f32>,
}

impl Descend {
    /// One weight `w` after the step with gradient `g`.
    pub fn scalar(self, w: f32, g: f32) -> f32 {
        match self.decay {
            None => w - self.rate * g,
            Some(decay) => decay * w - self.rate * g,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::init_rng;
    use ndarray::ShapeBuilder;
    use rand::Rng;

    fn random(shape: (usize, usize), column_major: bool) -> Array2<f32> {
        let mut rng = init_rng(shape.0 as u64 * 31 + shape.1 as u64);
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        if column_major {
            Array2::from_shape_vec(shape.f(), values).unwrap()
        } else {
            Array2::from_shape_vec(shape, values).unwrap()
        }
    }

    fn close(a: &Array2<f32>, b: &Array2<f32>) {
        assert_eq!(a.dim(), b.dim());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn every_set_agrees_with_ndarray_on_every_edge() {
        // Row and column remainders of every block size, a k with a tail.
        for set in KernelSet::supported() {
            for (m, k) in [(30, 784), (7, 784), (1, 13), (5, 37), (100, 784)] {
                for n in [1, 2, 3, 4, 5, 6, 7, 10, 11, 64, 65] {
                    let w = random((m, k), false);
                    let x = random((k, n), true);
                    close(&w_dot_x(set, &w, &x.view()), &w.dot(&x));
                    let d = random((m, n), false);
                    close(&delta_dot_xt(set, &d, &x.view()), &d.dot(&x.t()));
                    let e = random((m, n), true);
                    close(&wt_dot_delta(set, &w, &e), &w.t().dot(&e));
                    // Row-major inputs take another path, with the same result.
                    let xr = x.as_standard_layout().to_owned();
                    close(&w_dot_x(set, &w, &xr.view()), &w.dot(&x));
                }
            }
        }
    }

    fn same_bits(a: &[f32], b: &Array2<f32>, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {i}: {x} vs {y}");
        }
    }

    /// The claim `product_into` rests on: matrixmultiply's bits for an inner
    /// dimension up to CHAIN_MAX_INNER are one FMA chain per output.
    #[test]
    fn chain_equals_ndarray_dot_bit_for_bit() {
        if KernelSet::Avx2.missing_feature().is_some() {
            return;
        }
        let mut rng = init_rng(14);
        let mut scratch = Vec::new();
        for case in 0..1500 {
            let m = rng.random_range(1..40);
            let n = rng.random_range(1..40);
            let k = match case % 4 {
                0 => rng.random_range(1..9),
                1 => rng.random_range(1..=CHAIN_MAX_INNER),
                2 => CHAIN_MAX_INNER - rng.random_range(0..3),
                _ => rng.random_range(1..64),
            };
            let scale: f32 = [1e-3, 1.0, 30.0][case % 3];
            let mut fill = |shape: (usize, usize), f: bool| {
                let v: Vec<f32> = (0..shape.0 * shape.1)
                    .map(|_| scale * rng.random_range(-1.0f32..1.0))
                    .collect();
                if f {
                    Array2::from_shape_vec(shape.f(), v).unwrap()
                } else {
                    Array2::from_shape_vec(shape, v).unwrap()
                }
            };
            let a = fill((m, k), case % 2 == 0);
            let b = fill((k, n), case % 3 == 0);
            let mut out = vec![f32::NAN; m * n];
            product_into(
                KernelSet::Avx2,
                &a.view(),
                &b.view(),
                &mut out,
                &mut scratch,
            );
            same_bits(&out, &a.dot(&b), &format!("{m}x{k}x{n}"));
        }
    }

    #[test]
    fn into_products_equal_the_allocating_ones_bit_for_bit() {
        let mut scratch = Vec::new();
        for set in KernelSet::supported() {
            for (m, k) in [(30, 784), (10, 30), (7, 784), (1, 13), (5, 37), (300, 20)] {
                for n in [1, 2, 5, 10, 11, 64, 65, 100, 256, 257, 300] {
                    let w = random((m, k), false);
                    let x = random((k, n), true);
                    let d = random((m, n), false);
                    let xr = x.as_standard_layout().to_owned();
                    let mut out = vec![f32::NAN; m * n.max(k)];
                    for x in [x.view(), xr.view()] {
                        w_dot_x_into(set, &w, &x, &mut out, &mut scratch);
                        same_bits(&out[..m * n], &w_dot_x(set, &w, &x), "w·x");
                        delta_dot_xt_into(set, &d.view(), &x, &mut out, &mut scratch);
                        same_bits(&out[..m * k], &delta_dot_xt(set, &d, &x), "δ·xᵀ");
                    }
                    let mut out = vec![f32::NAN; k * n];
                    wt_dot_delta_into(set, &w, &d.view(), &mut out, &mut scratch);
                    same_bits(&out, &wt_dot_delta(set, &w, &d), "wᵀ·δ");
                    let mut z = d.clone();
                    sigmoid_in_place(set, z.as_slice_mut().unwrap());
                    same_bits(z.as_slice().unwrap(), &sigmoid(set, d.clone()), "σ");
                }
            }
        }
    }

    /// The 512-bit kernels give the AVX2 kernels' bits (products and the
    /// fused update), on every row, column and tail remainder.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernels_equal_the_avx2_ones_bit_for_bit() {
        if !avx512::available() {
            return;
        }
        for (m, k) in [
            (30, 784),
            (10, 30),
            (1, 13),
            (3, 37),
            (5, 8),
            (7, 47),
            (100, 784),
            (2, 1),
        ] {
            for n in [1, 2, 3, 4, 5, 6, 9, 10, 11, 64, 100, 256] {
                let w = random((m, k), false);
                let x = random((n, k), false); // n columns of k
                let d = random((m, n), false);
                let (w, x, d) = (
                    w.as_slice().unwrap(),
                    x.as_slice().unwrap(),
                    d.as_slice().unwrap(),
                );
                let (mut a, mut b) = (vec![f32::NAN; m * n], vec![0.0; m * n]);
                unsafe {
                    fma::w_dot_x(w, x, m, k, n, &mut a);
                    avx512::w_dot_x(w, x, m, k, n, &mut b);
                }
                assert!(
                    a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "w·x {m}x{k}x{n}"
                );
                let descends = [
                    None,
                    Some(Descend {
                        rate: 0.3,
                        decay: None,
                    }),
                    Some(Descend {
                        rate: 0.3,
                        decay: Some(0.999),
                    }),
                ];
                for descend in descends {
                    let (mut a, mut b) = (w.to_vec(), w.to_vec());
                    unsafe {
                        fma::delta_dot_xt(d, x, m, k, n, &mut a, descend);
                        avx512::delta_dot_xt(d, x, m, k, n, &mut b, descend);
                    }
                    let same = a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "δ·xᵀ {m}x{k}x{n} {descend:?}");
                }
            }
        }
    }

    #[test]
    fn portable_products_add_in_the_documented_order() {
        // Written out by hand for k = 11: eight partial sums, then the tail.
        let a: Vec<f32> = (0..11).map(|i| 1.0 / (i as f32 + 3.0)).collect();
        let b: Vec<f32> = (0..11).map(|i| (i as f32 + 0.5).sqrt()).collect();
        let mut partial = [0.0f32; 8];
        for i in 0..8 {
            partial[i] += a[i] * b[i];
        }
        let mut want = 0.0f32;
        for p in partial {
            want += p;
        }
        for i in 8..11 {
            want += a[i] * b[i];
        }
        let w = Array2::from_shape_vec((1, 11), a).unwrap();
        let x = Array2::from_shape_vec((11, 1), b).unwrap();
        let got = w_dot_x(KernelSet::Portable, &w, &x.view())[(0, 0)];
        assert_eq!(got.to_bits(), want.to_bits());
    }

    #[test]
    fn kernel_sets_round_trip_their_names() {
        for set in KernelSet::ALL {
            assert_eq!(KernelSet::from_name(set.name()), Some(set));
        }
        assert_eq!(KernelSet::from_name("avx512"), None);
        assert!(KernelSet::supported().contains(&KernelSet::Portable));
        assert!(KernelSet::supported().contains(&KernelSet::best()));
    }
}
