//! Data-parallel gradients: a training batch split into shards whose forward
//! and backward passes run side by side, each on its own single-thread pool,
//! their gradients summed.
//!
//! A training step is many small matrix products that two threads run no
//! faster than one, so splitting the batch across the cores is what makes a
//! step faster. Each shard's loss is its rows' share of the batch loss, so the
//! summed gradients are the whole batch's up to floating-point rounding. The
//! split depends only on the shard count and gradients are summed in shard
//! order: a given shard count gives the same bits on any number of cores.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::{Error, Result};

/// Keeps each tensor kernel on one thread unless `RAYON_NUM_THREADS` is set:
/// training runs its batch shards ([`crate::TrainConfig::shards`]) in
/// parallel instead, and splitting every small matrix product across the
/// cores made a stage-2 step slower than one core (BENCHMARKS.md). Call it at
/// the start of a training process, before any other thread exists.
pub fn one_thread_per_shard() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// The row ranges of a batch of `rows` rows split into at most `shards`
/// contiguous, non-empty parts whose sizes differ by at most one.
pub(crate) fn ranges(rows: usize, shards: usize) -> Vec<Range<usize>> {
    let parts = shards.clamp(1, rows.max(1));
    let (base, extra) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let end = start + base + usize::from(i < extra);
            let range = start..end;
            start = end;
            range
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// The worker pools of a training stage: one single-thread rayon pool per
/// shard, built once and used for every step (none for one shard, whose work
/// runs on the calling thread).
pub(crate) struct Shards {
    pools: Vec<ThreadPool>,
}

impl Shards {
    /// Pools for `count` shards (0 counts as 1).
    pub(crate) fn new(count: usize) -> Result<Self> {
        let pools = if count <= 1 {
            Vec::new()
        } else {
            (0..count)
                .map(|_| ThreadPoolBuilder::new().num_threads(1).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Thread(e.to_string()))?
        };
        Ok(Self { pools })
    }

    /// How many shards run side by side.
    pub(crate) fn count(&self) -> usize {
        self.pools.len().max(1)
    }

    /// `f` applied to every item, one item per pool at a time (so each item's
    /// kernels stay on one core instead of splitting every small product
    /// across all of them); results in item order.
    pub(crate) fn map<T, R, F>(&self, items: Vec<T>, f: F) -> Result<Vec<R>>
    where
        T: Send,
        R: Send,
        F: Fn(T) -> Result<R> + Sync,
    {
        if self.pools.is_empty() || items.len() <= 1 {
            return items.into_iter().map(f).collect();
        }
        let mut items = items.into_iter().peekable();
        let mut results = Vec::new();
        while items.peek().is_some() {
            let group: Vec<T> = items.by_ref().take(self.pools.len()).collect();
            let f = &f;
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .pools
                    .iter()
                    .zip(group)
                    .map(|(pool, item)| scope.spawn(move || pool.install(|| f(item))))
                    .collect();
                for handle in handles {
                    let result = handle
                        .join()
                        .map_err(|_| Error::Thread("a shard panicked".into()))?;
                    results.push(result?);
                }
                Ok::<_, Error>(())
            })?;
        }
        Ok(results)
    }

    /// Computes `loss_of(range)` for each shard of a `rows`-row batch in
    /// parallel, backpropagates the first tensor it returns (the shard's
    /// contribution to the batch loss: for a mean over the batch, the shard
    /// rows' sum divided by `rows`), and returns every returned scalar summed
    /// over the shards (the batch loss first, then any reported terms) with
    /// the summed gradients of `vars`.
    pub(crate) fn backward<F>(
        &self,
        rows: usize,
        vars: &[Var],
        loss_of: F,
    ) -> Result<(Vec<f32>, GradStore)>
    where
        F: Fn(Range<usize>) -> Result<Vec<Tensor>> + Sync,
    {
        let shard = |range: Range<usize>| -> Result<(Vec<f32>, GradStore)> {
            let terms = loss_of(range)?;
            let loss = terms
                .first()
                .ok_or_else(|| Error::Config("a shard returned no loss".into()))?;
            let gradients = loss.backward()?;
            let values = terms
                .iter()
                .map(|t| t.to_scalar::<f32>())
                .collect::<candle_core::Result<_>>()?;
            Ok((values, gradients))
        };
        let parts = self.map(ranges(rows, self.count()), shard)?;
        let mut parts = parts.into_iter();
        let (mut values, mut total) = parts
            .next()
            .ok_or_else(|| Error::Config("a training batch needs rows".into()))?;
        for (part_values, part) in parts {
            for (value, part_value) in values.iter_mut().zip(part_values) {
                *value += part_value;
            }
            for var in vars {
                let Some(grad) = part.get(var.as_tensor()) else {
                    continue;
                };
                let sum = match total.get(var.as_tensor()) {
                    Some(so_far) => (so_far + grad)?,
                    None => grad.clone(),
                };
                total.insert(var.as_tensor(), sum);
            }
        }
        Ok((values, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn ranges_cover_the_batch_in_order() {
        assert_eq!(ranges(32, 2), vec![0..16, 16..32]);
        assert_eq!(ranges(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(ranges(2, 4), vec![0..1, 1..2]);
        assert_eq!(ranges(5, 1), vec![0..5]);
        assert_eq!(ranges(5, 0), vec![0..5]);
        assert!(ranges(0, 2).is_empty());
    }

    #[test]
    fn sharded_gradients_equal_the_whole_batch() -> Result<()> {
        let device = Device::Cpu;
        let w = Var::from_tensor(&Tensor::arange(0f32, 12.0, &device)?.reshape((3, 4))?)?;
        let x = Tensor::arange(0f32, 40.0, &device)?
            .reshape((10, 4))?
            .affine(0.1, -1.0)?;
        let loss_of = |r: Range<usize>| -> Result<Vec<Tensor>> {
            let rows = x.narrow(0, r.start, r.len())?;
            let y = rows.matmul(&w.as_tensor().t()?)?.tanh()?.sqr()?;
            Ok(vec![(y.sum_all()? / 10.0)?])
        };
        let (whole_loss, whole) =
            Shards::new(1)?.backward(10, std::slice::from_ref(&w), loss_of)?;
        let whole_loss = whole_loss[0];
        for shards in [2, 3, 10] {
            let (loss, sharded) =
                Shards::new(shards)?.backward(10, std::slice::from_ref(&w), loss_of)?;
            let loss = loss[0];
            assert!(
                (loss - whole_loss).abs() < 1e-5,
                "{shards}: {loss} vs {whole_loss}"
            );
            let a = whole
                .get(w.as_tensor())
                .ok_or(Error::Config("no grad".into()))?;
            let b = sharded
                .get(w.as_tensor())
                .ok_or(Error::Config("no grad".into()))?;
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(scale > 1e-3, "the test's gradient must not vanish");
            assert!(
                diff <= 1e-5 * scale,
                "{shards} shards: {diff} (scale {scale})"
            );
        }
        Ok(())
    }
}
