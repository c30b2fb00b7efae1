//! Matrix products: the one kernel behind every dense layer and convolution.
//!
//! [`matmul`] runs the `gemm` crate on the calling thread over borrowed,
//! possibly transposed operands ([`Matrix`]), so that no operand is copied
//! into another layout first.

use ndarray::ArrayView2;

/// A borrowed `rows × cols` matrix of f32: an ndarray view over part of the
/// flat parameter buffer or of a workspace, row-major as stored, or (after
/// [`Matrix::t`]) its transpose over the same values, so that a weight stored
/// `[out, in]` serves as `Wᵀ` without a copy. The view's shape and strides
/// are what [`matmul`] hands the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a>(ArrayView2<'a, f32>);

impl<'a> Matrix<'a> {
    /// The first `rows · cols` values of `data` as a row-major `rows × cols`
    /// matrix. Panics if `data` is shorter.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        let len = rows.checked_mul(cols).expect("matrix size overflows usize");
        Matrix(ArrayView2::from_shape((rows, cols), &data[..len]).expect("exactly rows · cols values"))
    }

    /// The transpose, `cols × rows`, over the same buffer.
    pub fn t(self) -> Self {
        Matrix(self.0.reversed_axes())
    }

    /// The view itself.
    pub fn view(&self) -> ArrayView2<'a, f32> {
        self.0
    }
}

impl<'a> From<ArrayView2<'a, f32>> for Matrix<'a> {
    fn from(view: ArrayView2<'a, f32>) -> Self {
        Matrix(view)
    }
}

/// `dst = lhs · rhs`, with `dst` row-major `[lhs.rows, rhs.cols]`, computed on
/// the calling thread by the `gemm` crate (which picks AVX2/FMA or AVX-512
/// kernels at run time, so the binary runs on any x86-64).
///
/// Deterministic: without parallelism the blocking, and with it the order in
/// which each sum is accumulated, depends only on the shapes and the CPU's
/// features, so the same inputs give bit-identical results on one machine.
///
/// Panics unless `lhs.cols == rhs.rows` and `dst.len() == lhs.rows · rhs.cols`.
pub fn matmul(lhs: Matrix<'_>, rhs: Matrix<'_>, dst: &mut [f32]) {
    product(lhs, rhs, dst, false);
}

/// `dst = (lhs · rhs)ᵀ`, with `dst` row-major `[rhs.cols, lhs.rows]`: the
/// product written column by column. The kernel runs fastest with its left
/// operand contiguous down the columns; a product `A · B` whose `Aᵀ` is
/// stored row-major is therefore best computed as `(Bᵀ · Aᵀ)ᵀ` here (a
/// convolution's forward pass: 1.0–1.5× faster, see docs/performance.md).
///
/// Panics unless `lhs.cols == rhs.rows` and `dst.len() == lhs.rows · rhs.cols`.
pub fn matmul_transposed(lhs: Matrix<'_>, rhs: Matrix<'_>, dst: &mut [f32]) {
    product(lhs, rhs, dst, true);
}

fn product(lhs: Matrix<'_>, rhs: Matrix<'_>, dst: &mut [f32], transposed: bool) {
    let ((m, k), (rhs_rows, n)) = (lhs.0.dim(), rhs.0.dim());
    // Real asserts rather than debug ones: they are what makes the call below
    // sound, and cost a few comparisons per product of thousands of FLOP.
    assert_eq!(rhs_rows, k, "inner dimensions differ: {m}×{k} · {rhs_rows}×{n}");
    assert_eq!(Some(dst.len()), m.checked_mul(n), "destination holds {} values, the product {m}×{n}", dst.len());
    let (lhs_strides, rhs_strides) = (lhs.0.strides(), rhs.0.strides());
    let ((lhs_rs, lhs_cs), (rhs_rs, rhs_cs)) = ((lhs_strides[0], lhs_strides[1]), (rhs_strides[0], rhs_strides[1]));
    // Element [i, j] of the product goes to `i·dst_rs + j·dst_cs`.
    let (dst_rs, dst_cs) = if transposed { (1, m as isize) } else { (n as isize, 1) };
    // SAFETY: gemm reads lhs at `i·lhs_rs + p·lhs_cs` from its first element
    // for i < m, p < k: the elements of the view at [i, p], which ndarray
    // guarantees lie inside the slice it borrows; likewise rhs. It writes dst
    // at `i·n + j` (or `i + j·m`, transposed) `< m·n = dst.len()`. `dst` is
    // borrowed exclusively, so it cannot alias the shared inputs, and with
    // `read_dst = false` its old values are not read: gemm computes
    // `dst = alpha·dst + beta·lhs·rhs` with alpha ignored.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs,
            dst_rs,
            false,
            lhs.0.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.0.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_distr::StandardNormal;

    use super::*;
    use crate::rng::StreamRng;

    fn reference_product(lhs: &[f32], rhs: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| f64::from(lhs[i * k + p]) * f64::from(rhs[p * n + j])).sum();
            }
        }
        out
    }

    /// The row-major transpose of a row-major `rows × cols` buffer.
    fn transposed(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows).map(|i| data[(i % rows) * cols + i / rows]).collect()
    }

    #[test]
    fn matmul_matches_the_obvious_product_in_every_layout() {
        let mut rng = StreamRng::seed_from_u64(11);
        // Odd sizes, so the kernels' edge handling runs; an empty inner dimension, whose
        // product is all zeros; and the network's own shapes.
        for (m, k, n) in [(1, 1, 1), (3, 0, 2), (7, 13, 5), (33, 17, 65), (32, 784, 200), (200, 32, 784), (32, 10, 200)]
        {
            let lhs: Vec<f32> = (0..m * k).map(|_| rng.sample(StandardNormal)).collect();
            let rhs: Vec<f32> = (0..k * n).map(|_| rng.sample(StandardNormal)).collect();
            let expected = reference_product(&lhs, &rhs, m, k, n);
            let (lhs_t, rhs_t) = (transposed(&lhs, m, k), transposed(&rhs, k, n));
            for (lhs_transposed, rhs_transposed) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if lhs_transposed { Matrix::new(&lhs_t, k, m).t() } else { Matrix::new(&lhs, m, k) };
                let b = if rhs_transposed { Matrix::new(&rhs_t, n, k).t() } else { Matrix::new(&rhs, k, n) };
                let (mut dst, mut dst_t) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                matmul(a, b, &mut dst);
                matmul_transposed(a, b, &mut dst_t);
                let written_t = transposed(&dst_t, n, m);
                for (i, ((&got, &got_t), &want)) in dst.iter().zip(&written_t).zip(&expected).enumerate() {
                    // f32 sums of k products of unit normals: error well under 1e-5·√k.
                    let tolerance = 1e-5 * (k as f64).sqrt().max(1.0) * want.abs().max(1.0);
                    assert!(
                        (f64::from(got) - want).abs() < tolerance && (f64::from(got_t) - want).abs() < tolerance,
                        "{m}×{k}·{k}×{n} ({lhs_transposed}, {rhs_transposed}) [{i}]: {got}, transposed {got_t}, vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn matmul_refuses_mismatched_shapes() {
        let a = [1.0; 6];
        matmul(Matrix::new(&a, 2, 3), Matrix::new(&a, 2, 3), &mut [0.0; 4]);
    }
}
