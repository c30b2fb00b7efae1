//! Winograd's minimal filtering, F(m×m, r×r) with an 8×8 transform tile,
//! for stride-1 convolutions with several input channels (LeNet-5's and the
//! FedAvg CNN's second layers): about a fifth of im2col's multiplications,
//! as 64 smaller matrix products (docs/performance.md, "Winograd's
//! transforms for the convolutions with many channels").
//!
//! Each `m × m` block of outputs (`m = 9 − r`) of one image is computed from
//! the `8 × 8` input tile it reads: the tile is transformed (`Bᵀ d B`), the
//! kernel too (`G g Gᵀ`), the two multiplied element by element and summed
//! over input channels, which for each of the 64 tile positions `ξ` is one
//! product `M[ξ] = U[ξ] · V[ξ]` (`[out, in] · [in, tiles]`), and the result
//! transformed back (`Aᵀ M A`). The backward pass runs the adjoints of the
//! same steps: `dU[ξ] = dM[ξ] · V[ξ]ᵀ`, `dV[ξ] = U[ξ]ᵀ · dM[ξ]`.
//!
//! The transforms come from the interpolation points 0, ±1, ±2, ±½ and ∞
//! (those of NNPACK's F(6×6, 3×3), which trains in f32). Every value of a
//! tile is a vector of the batch's samples (activations are `[features, B]`),
//! so each transform works on 16 samples at a time. Rounding differs
//! from im2col's (within 1e-4 of the output's scale in the tests), but the
//! order of every sum is fixed: the same inputs give the same bits.

use multiversion::multiversion;
use ndarray::{ArrayView4, ArrayViewMut4, Axis, s};

use crate::conv::Conv2dGeometry;
use crate::matmul::{Matrix, matmul, matmul_transposed};
use crate::model::row_sums;

/// Side of the transform tile.
const ALPHA: usize = 8;
/// Values in a transform tile.
const POSITIONS: usize = ALPHA * ALPHA;
/// The finite interpolation points; the last is ∞.
const POINTS: [f64; ALPHA - 1] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5];

/// Whether Winograd computes a convolution of this geometry: stride 1 and
/// kernels 3 to 6 (output blocks of 6 down to 3). A 7×7 kernel would leave
/// blocks of 2, a third of im2col's multiplications for 16 times the data,
/// and ran slower than im2col (docs/performance.md).
pub(crate) fn supports(geometry: &Conv2dGeometry) -> bool {
    geometry.stride == 1 && (3..=6).contains(&geometry.kernel)
}

/// A small row-major matrix of at most 8 × 8.
#[derive(Debug, Clone, Copy)]
struct Small {
    rows: usize,
    cols: usize,
    values: [[f32; ALPHA]; ALPHA],
}

impl Small {
    fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        let mut values = [[0.0; ALPHA]; ALPHA];
        for (i, row) in values.iter_mut().enumerate().take(rows) {
            for (j, v) in row.iter_mut().enumerate().take(cols) {
                *v = f(i, j) as f32;
            }
        }
        Small { rows, cols, values }
    }

    fn t(&self) -> Self {
        Small::from_fn(self.cols, self.rows, |i, j| f64::from(self.values[j][i]))
    }
}

/// The coefficients of `Π (x − p)` over `points`, lowest power first.
fn polynomial(points: impl Iterator<Item = f64>) -> [f64; ALPHA] {
    let mut coefficients = [0.0; ALPHA];
    coefficients[0] = 1.0;
    for p in points {
        for power in (0..ALPHA).rev() {
            let lower = if power > 0 { coefficients[power - 1] } else { 0.0 };
            coefficients[power] = lower - p * coefficients[power];
        }
    }
    coefficients
}

/// The three transforms of F(m×m, r×r) and their transposes.
#[derive(Debug, Clone, Copy)]
struct Transforms {
    /// Output block side.
    m: usize,
    /// `Bᵀ`, 8 × 8: an input tile's transform (and `B` for its adjoint).
    bt: Small,
    b: Small,
    /// `G`, 8 × r: the kernel's transform (and `Gᵀ`).
    g: Small,
    gt: Small,
    /// `Aᵀ`, m × 8: back to outputs (and `A`).
    at: Small,
    a: Small,
}

impl Transforms {
    /// Toom–Cook for correlation: with `f_j = Π_{l≠j} (p_j − p_l)`,
    /// `Aᵀ[i][j] = p_jⁱ`, `G[j][k] = p_jᵏ / f_j`, and row `j` of `Bᵀ` the
    /// coefficients of `Π_{l≠j} (x − p_l)`; at ∞ the leading terms.
    fn new(r: usize) -> Self {
        let m = ALPHA + 1 - r;
        let infinity = ALPHA - 1;
        let others = |j: usize| POINTS.iter().enumerate().filter(move |(l, _)| *l != j).map(|(_, p)| *p);
        let f = |j: usize| others(j).map(|p| POINTS[j] - p).product::<f64>();
        let bt_rows: [[f64; ALPHA]; ALPHA] =
            std::array::from_fn(|j| if j == infinity { polynomial(POINTS.into_iter()) } else { polynomial(others(j)) });
        let bt = Small::from_fn(ALPHA, ALPHA, |j, t| bt_rows[j][t]);
        let g = Small::from_fn(ALPHA, r, |j, k| {
            if j == infinity { f64::from(u8::from(k == r - 1)) } else { POINTS[j].powi(k as i32) / f(j) }
        });
        let at = Small::from_fn(m, ALPHA, |i, j| {
            if j == infinity { f64::from(u8::from(i == m - 1)) } else { POINTS[j].powi(i as i32) }
        });
        Transforms { m, b: bt.t(), bt, gt: g.t(), g, a: at.t(), at }
    }
}

/// How a geometry's outputs split into blocks, and where the workspace's parts lie.
#[derive(Debug, Clone, Copy)]
struct Plan {
    transforms: Transforms,
    tiles_y: usize,
    tiles_x: usize,
    /// Columns of every product: tiles of all samples, `(ty, tx, s)`.
    width: usize,
    b: usize,
}

impl Plan {
    fn new(geometry: &Conv2dGeometry, b: usize) -> Self {
        let transforms = Transforms::new(geometry.kernel);
        let (tiles_y, tiles_x) =
            (geometry.out_height().div_ceil(transforms.m), geometry.out_width().div_ceil(transforms.m));
        Plan { transforms, tiles_y, tiles_x, width: tiles_y * tiles_x * b, b }
    }

    /// The tiles as `(ty, tx, first column)`.
    fn tiles(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.tiles_y)
            .flat_map(move |ty| (0..self.tiles_x).map(move |tx| (ty, tx, (ty * self.tiles_x + tx) * self.b)))
    }
}

/// Floats of the workspace for a batch of `b`: the transformed inputs `V`
/// (`[64, in, width]`), the products `M` (`[64, out, width]`), the
/// transformed kernels `U` and their gradient (`[64, out, in]` each), and
/// two tiles of B-vectors.
pub(crate) fn workspace_len(geometry: &Conv2dGeometry, b: usize) -> usize {
    let plan = Plan::new(geometry, b);
    POSITIONS * (geometry.in_channels * plan.width + 2 * kernels(geometry) + 2 * b) + m_len(geometry, &plan)
}

fn kernels(geometry: &Conv2dGeometry) -> usize {
    geometry.out_channels * geometry.in_channels
}

/// Floats of `M`, which also holds the kernels' transforms on their way
/// (two tiles of `[8, 8, out · in]` at most).
fn m_len(geometry: &Conv2dGeometry, plan: &Plan) -> usize {
    POSITIONS * (geometry.out_channels * plan.width).max(2 * kernels(geometry))
}

/// The workspace split into its parts.
struct Parts<'a> {
    v: &'a mut [f32],
    m: &'a mut [f32],
    u: &'a mut [f32],
    du: &'a mut [f32],
    tiles: [&'a mut [f32]; 2],
}

fn parts<'a>(geometry: &Conv2dGeometry, plan: &Plan, workspace: &'a mut [f32]) -> Parts<'a> {
    let (c, k) = (geometry.in_channels, geometry.out_channels);
    let (v, rest) = workspace.split_at_mut(POSITIONS * c * plan.width);
    let (m, rest) = rest.split_at_mut(m_len(geometry, plan));
    let (u, rest) = rest.split_at_mut(POSITIONS * k * c);
    let (du, rest) = rest.split_at_mut(POSITIONS * k * c);
    let (t0, rest) = rest.split_at_mut(POSITIONS * plan.b);
    Parts { v, m, u, du, tiles: [t0, &mut rest[..POSITIONS * plan.b]] }
}

/// Samples transformed together: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// A strided run of B-vectors: vector `i` starts at `start + i · stride`.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: usize,
    stride: usize,
}

impl Run {
    fn new(start: usize, stride: usize) -> Self {
        Run { start, stride }
    }
}

/// `dst[j] = Σ_{t < inputs} L[j][t] · src[t]` for `j < rows`, over B-vectors
/// laid out as `from` in `src` and `to` in `dst`: one side of a tile's
/// transform. Works `LANES` samples at a time, holding the inputs in
/// registers; zero coefficients are skipped (the sums keep a fixed order;
/// an infinite input times a zero coefficient therefore adds nothing, where
/// im2col's product would give NaN).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn transform(
    l: &Small,
    (src, from): (&[f32], Run),
    inputs: usize,
    (dst, to): (&mut [f32], Run),
    rows: usize,
    b: usize,
) {
    for lane in (0..b).step_by(LANES) {
        let width = LANES.min(b - lane);
        let mut x = [[0.0f32; LANES]; ALPHA];
        for (t, x) in x.iter_mut().enumerate().take(inputs) {
            let values = &src[from.start + t * from.stride + lane..][..width];
            // A whole register's worth is copied as one (a slice of run-time
            // length would be a call to memmove).
            match <&[f32; LANES]>::try_from(values) {
                Ok(values) => *x = *values,
                Err(_) => x[..width].copy_from_slice(values),
            }
        }
        for (j, coefficients) in l.values.iter().enumerate().take(rows) {
            let mut sum = [0.0f32; LANES];
            // All 8 columns (those past `inputs` hold zeros), so that the
            // loop unrolls with `x` in registers.
            for (x, &coefficient) in x.iter().zip(coefficients) {
                if coefficient != 0.0 {
                    for (sum, x) in sum.iter_mut().zip(x) {
                        *sum += coefficient * x;
                    }
                }
            }
            let target = &mut dst[to.start + j * to.stride + lane..][..width];
            match <&mut [f32; LANES]>::try_from(&mut *target) {
                Ok(target) => *target = sum,
                Err(_) => target.copy_from_slice(&sum[..width]),
            }
        }
    }
}

/// `dst = L · src · Lᵀ` over contiguous tiles of B-vectors: `src` is
/// `[L.cols, L.cols, b]`, `dst` `[L.rows, L.rows, b]`, `tmp` at least
/// `[L.cols, L.rows, b]`.
fn sandwich(l: &Small, src: &[f32], dst: &mut [f32], tmp: &mut [f32], b: usize) {
    let (n_out, n_in) = (l.rows, l.cols);
    for t1 in 0..n_in {
        transform(l, (src, Run::new(t1 * n_in * b, b)), n_in, (&mut *tmp, Run::new(t1 * n_out * b, b)), n_out, b);
    }
    for j2 in 0..n_out {
        transform(l, (tmp, Run::new(j2 * b, n_out * b)), n_in, (&mut *dst, Run::new(j2 * b, n_out * b)), n_out, b);
    }
}

/// `dst = srcᵀ` for a row-major `rows × cols` `src`.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    for (i, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (j, value) in row.iter().enumerate() {
            dst[j * rows + i] = *value;
        }
    }
}

/// Where row `y` of a tile starting at column `x0` lies in the input.
enum Row<'a> {
    /// Inside, contiguous: the input's buffer and the tile row's first value.
    Inside(&'a [f32], usize),
    /// Partly in the padding, or in a strided input: gather it.
    Edge,
}

/// Row `y`'s 8 B-vectors from column `x0` on, or `None` when the row is
/// all padding.
fn input_row<'a>(input: &ArrayView4<'a, f32>, c: usize, (y, x0): (isize, isize)) -> Option<Row<'a>> {
    let (h, w, b) = (input.len_of(Axis(1)), input.len_of(Axis(2)), input.len_of(Axis(3)));
    if !(0..h as isize).contains(&y) {
        return None;
    }
    let inside = x0 >= 0 && x0 as usize + ALPHA <= w;
    match input.to_slice() {
        Some(all) if inside => Some(Row::Inside(all, ((c * h + y as usize) * w + x0 as usize) * b)),
        _ => Some(Row::Edge),
    }
}

/// Copies row `y` of `input[c]`'s 8 B-vectors from column `x0` into `row`, zero outside the image.
fn gather_row(input: &ArrayView4<'_, f32>, c: usize, (y, x0): (isize, isize), row: &mut [f32]) {
    let (h, w, b) = (input.len_of(Axis(1)), input.len_of(Axis(2)) as isize, input.len_of(Axis(3)));
    let contiguous = input.to_slice();
    for (j, values) in row.chunks_exact_mut(b).take(ALPHA).enumerate() {
        let x = x0 + j as isize;
        if !(0..w).contains(&x) {
            values.fill(0.0);
        } else if let Some(all) = contiguous {
            values.copy_from_slice(&all[((c * h + y as usize) * w as usize + x as usize) * b..][..b]);
        } else {
            for (v, x) in values.iter_mut().zip(input.slice(s![c, y, x, ..])) {
                *v = *x;
            }
        }
    }
}

/// The convolution of a batch without its bias, as [`crate::conv::forward`]
/// computes it; leaves the transformed inputs and kernels in `workspace`
/// (of [`workspace_len`]) for [`backward`].
pub(crate) fn forward(
    geometry: &Conv2dGeometry,
    weight: &[f32],
    input: ArrayView4<'_, f32>,
    workspace: &mut [f32],
    output: &mut [f32],
) {
    let plan = Plan::new(geometry, input.len_of(Axis(3)));
    let Parts { v, m, u, du, tiles: [tile, tmp] } = parts(geometry, &plan, workspace);
    // `du` and `m` are free until later: the kernels' transform passes through them.
    transform_kernels(geometry, &plan, weight, u, (du, m));
    transform_inputs(geometry, &plan, &input, v, (tile, tmp));
    let (c_in, k_out) = (geometry.in_channels, geometry.out_channels);
    // M[ξ] = U[ξ] · V[ξ], as (V[ξ]ᵀ · U[ξ]ᵀ)ᵀ: the kernel's left operand is
    // then contiguous down its columns (docs/performance.md).
    for xi in 0..POSITIONS {
        let u = Matrix::new(&u[xi * k_out * c_in..], k_out, c_in);
        let v = Matrix::new(&v[xi * c_in * plan.width..], c_in, plan.width);
        matmul_transposed(v.t(), u.t(), &mut m[xi * k_out * plan.width..][..k_out * plan.width]);
    }
    transform_outputs(geometry, &plan, m, output, tmp);
}

/// `U[ξ][k][c] = (G g Gᵀ)[ξ]`: every kernel at once, as one tile whose
/// values are vectors of `out · in` kernels (transposed into `scratch.0`).
fn transform_kernels(
    geometry: &Conv2dGeometry,
    plan: &Plan,
    weight: &[f32],
    u: &mut [f32],
    scratch: (&mut [f32], &mut [f32]),
) {
    let (r, kernels) = (geometry.kernel, kernels(geometry));
    let (transposed, tmp) = scratch;
    transpose(weight, &mut transposed[..r * r * kernels], kernels, r * r);
    sandwich(&plan.transforms.g, transposed, u, tmp, kernels);
}

/// `V[ξ][c][tile] = (Bᵀ d B)[ξ]`: each tile's rows first (straight from the
/// input where the row lies inside it), then its columns straight into V's planes.
fn transform_inputs(
    geometry: &Conv2dGeometry,
    plan: &Plan,
    input: &ArrayView4<'_, f32>,
    v: &mut [f32],
    (row, tmp): (&mut [f32], &mut [f32]),
) {
    let (tr, b, c_in) = (&plan.transforms, plan.b, geometry.in_channels);
    let padding = geometry.padding as isize;
    let plane = c_in * plan.width;
    for c in 0..c_in {
        for (ty, tx, column) in plan.tiles() {
            let origin = ((ty * tr.m) as isize - padding, (tx * tr.m) as isize - padding);
            for t1 in 0..ALPHA {
                let rows = (&mut *tmp, Run::new(t1 * ALPHA * b, b));
                match input_row(input, c, (origin.0 + t1 as isize, origin.1)) {
                    Some(Row::Inside(all, start)) => {
                        transform(&tr.bt, (all, Run::new(start, b)), ALPHA, rows, ALPHA, b)
                    }
                    Some(Row::Edge) => {
                        gather_row(input, c, (origin.0 + t1 as isize, origin.1), row);
                        transform(&tr.bt, (row, Run::new(0, b)), ALPHA, rows, ALPHA, b);
                    }
                    None => tmp[t1 * ALPHA * b..][..ALPHA * b].fill(0.0),
                }
            }
            for j2 in 0..ALPHA {
                let to = Run::new(j2 * plane + c * plan.width + column, ALPHA * plane);
                transform(&tr.bt, (tmp, Run::new(j2 * b, ALPHA * b)), ALPHA, (&mut *v, to), ALPHA, b);
            }
        }
    }
}

/// Each output block `= Aᵀ M A`: rows straight from M's planes, then columns
/// straight into the output (the part of the block inside it).
fn transform_outputs(geometry: &Conv2dGeometry, plan: &Plan, m: &[f32], output: &mut [f32], tmp: &mut [f32]) {
    let (tr, b, k_out) = (&plan.transforms, plan.b, geometry.out_channels);
    let (oh, ow) = (geometry.out_height(), geometry.out_width());
    let plane = k_out * plan.width;
    for k in 0..k_out {
        for (ty, tx, column) in plan.tiles() {
            for j1 in 0..ALPHA {
                let from = Run::new(j1 * ALPHA * plane + k * plan.width + column, plane);
                transform(&tr.at, (m, from), ALPHA, (&mut *tmp, Run::new(j1 * tr.m * b, b)), tr.m, b);
            }
            let (y, x) = (ty * tr.m, tx * tr.m);
            let (rows, columns) = (tr.m.min(oh - y), tr.m.min(ow - x));
            for i2 in 0..columns {
                let to = Run::new(((k * oh + y) * ow + x + i2) * b, ow * b);
                transform(&tr.at, (tmp, Run::new(i2 * b, tr.m * b)), ALPHA, (&mut *output, to), rows, b);
            }
        }
    }
}

/// The gradients of a batch, as [`crate::conv::backward`] computes them,
/// from what [`forward`] left in `workspace`.
pub(crate) fn backward(
    geometry: &Conv2dGeometry,
    workspace: &mut [f32],
    output_grad: &[f32],
    (weight_grad, bias_grad): (&mut [f32], &mut [f32]),
    input_grad: Option<ArrayViewMut4<'_, f32>>,
) {
    let (c_in, k_out) = (geometry.in_channels, geometry.out_channels);
    let plan = Plan::new(geometry, output_grad.len() / (k_out * geometry.out_pixels()));
    let Parts { v, m: dm, u, du, tiles: [tile, tmp] } = parts(geometry, &plan, workspace);
    row_sums(output_grad, bias_grad);
    output_transform_adjoint(geometry, &plan, output_grad, dm, tmp);
    // dU[ξ] = dM[ξ] · V[ξ]ᵀ; then V[ξ] becomes dV[ξ] = U[ξ]ᵀ · dM[ξ]
    for xi in 0..POSITIONS {
        let dm = Matrix::new(&dm[xi * k_out * plan.width..], k_out, plan.width);
        let v = &mut v[xi * c_in * plan.width..][..c_in * plan.width];
        matmul(dm, Matrix::new(v, c_in, plan.width).t(), &mut du[xi * k_out * c_in..][..k_out * c_in]);
        if input_grad.is_some() {
            matmul(Matrix::new(&u[xi * k_out * c_in..], k_out, c_in).t(), dm, v);
        }
    }
    // dg = Gᵀ dU G for every kernel at once (through `dm`, free now)
    let (r, kernels) = (geometry.kernel, kernels(geometry));
    let (transposed, tmp_kernels) = dm.split_at_mut(r * r * kernels);
    sandwich(&plan.transforms.gt, du, transposed, tmp_kernels, kernels);
    transpose(transposed, &mut weight_grad[..kernels * r * r], r * r, kernels);
    if let Some(input_grad) = input_grad {
        input_transform_adjoint(geometry, &plan, v, input_grad, (tile, tmp));
    }
}

/// `dM[ξ] = (A dY Aᵀ)[ξ]`, the adjoint of [`transform_outputs`]: each
/// block's part inside the output, rows then columns into dM's planes.
fn output_transform_adjoint(
    geometry: &Conv2dGeometry,
    plan: &Plan,
    output_grad: &[f32],
    dm: &mut [f32],
    tmp: &mut [f32],
) {
    let (tr, b, k_out) = (&plan.transforms, plan.b, geometry.out_channels);
    let (oh, ow) = (geometry.out_height(), geometry.out_width());
    let plane = k_out * plan.width;
    for k in 0..k_out {
        for (ty, tx, column) in plan.tiles() {
            let (y, x) = (ty * tr.m, tx * tr.m);
            let (rows, columns) = (tr.m.min(oh - y), tr.m.min(ow - x));
            for i1 in 0..rows {
                let from = Run::new(((k * oh + y + i1) * ow + x) * b, b);
                transform(&tr.a, (output_grad, from), columns, (&mut *tmp, Run::new(i1 * ALPHA * b, b)), ALPHA, b);
            }
            for j2 in 0..ALPHA {
                let to = Run::new(j2 * plane + k * plan.width + column, ALPHA * plane);
                transform(&tr.a, (tmp, Run::new(j2 * b, ALPHA * b)), rows, (&mut *dm, to), ALPHA, b);
            }
        }
    }
}

/// The input's gradient, `B dV Bᵀ` per tile added where the tile lies
/// inside the image: the adjoint of [`transform_inputs`].
fn input_transform_adjoint(
    geometry: &Conv2dGeometry,
    plan: &Plan,
    dv: &[f32],
    mut input_grad: ArrayViewMut4<'_, f32>,
    (out, tmp): (&mut [f32], &mut [f32]),
) {
    let (tr, b, c_in) = (&plan.transforms, plan.b, geometry.in_channels);
    input_grad.fill(0.0);
    let (h, w) = (geometry.in_height as isize, geometry.in_width as isize);
    let padding = geometry.padding as isize;
    let plane = c_in * plan.width;
    for c in 0..c_in {
        for (ty, tx, column) in plan.tiles() {
            for j1 in 0..ALPHA {
                let from = Run::new(j1 * ALPHA * plane + c * plan.width + column, plane);
                transform(&tr.b, (dv, from), ALPHA, (&mut *tmp, Run::new(j1 * ALPHA * b, b)), ALPHA, b);
            }
            for t2 in 0..ALPHA {
                let to = Run::new(t2 * b, ALPHA * b);
                transform(&tr.b, (tmp, Run::new(t2 * b, ALPHA * b)), ALPHA, (&mut *out, to), ALPHA, b);
            }
            let (y0, x0) = ((ty * tr.m) as isize - padding, (tx * tr.m) as isize - padding);
            for (i, row) in out.chunks_exact(ALPHA * b).enumerate() {
                let y = y0 + i as isize;
                for (j, values) in row.chunks_exact(b).enumerate() {
                    let x = x0 + j as isize;
                    if (0..h).contains(&y) && (0..w).contains(&x) {
                        add_into(&mut input_grad, (c, y as usize, x as usize), values);
                    }
                }
            }
        }
    }
}

/// `grad[c, y, x, ..] += values`, straight into the buffer when it is in
/// standard layout (a stage's always is).
fn add_into(grad: &mut ArrayViewMut4<'_, f32>, (c, y, x): (usize, usize, usize), values: &[f32]) {
    let (h, w, b) = (grad.len_of(Axis(1)), grad.len_of(Axis(2)), grad.len_of(Axis(3)));
    match grad.as_slice_mut() {
        Some(all) => all[((c * h + y) * w + x) * b..][..b].iter_mut().zip(values).for_each(|(t, v)| *t += v),
        None => grad.slice_mut(s![c, y, x, ..]).iter_mut().zip(values).for_each(|(t, v)| *t += v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D identity behind every transform: for any kernel size 3–6,
    /// `Aᵀ [(G g) ⊙ (Bᵀ d)]` is the correlation `y_i = Σ_k g_k d_{i+k}`.
    #[test]
    fn the_transforms_compute_a_correlation() {
        for r in 3..=6 {
            let tr = Transforms::new(r);
            let d: Vec<f64> = (0..ALPHA).map(|i| (i as f64 * 0.37).sin()).collect();
            let g: Vec<f64> = (0..r).map(|k| (k as f64 * 1.3).cos()).collect();
            let gg: Vec<f64> = (0..ALPHA).map(|j| (0..r).map(|k| f64::from(tr.g.values[j][k]) * g[k]).sum()).collect();
            let bd: Vec<f64> =
                (0..ALPHA).map(|j| (0..ALPHA).map(|t| f64::from(tr.bt.values[j][t]) * d[t]).sum()).collect();
            for i in 0..tr.m {
                let got: f64 = (0..ALPHA).map(|j| f64::from(tr.at.values[i][j]) * gg[j] * bd[j]).sum();
                let want: f64 = (0..r).map(|k| g[k] * d[i + k]).sum();
                assert!((got - want).abs() < 1e-5, "r {r}, output {i}: {got} vs {want}");
            }
        }
    }
}
