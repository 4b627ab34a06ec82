//! The batch planner: a pure function from queue state to what the next tick does.
//!
//! Rules (kept simple so they are easy to reason about under load):
//! - **Admission** is first-in, first-out. Waiting jobs join while the rows in flight
//!   stay within `max_rows`. The head of the queue is never overtaken, so a big job
//!   cannot starve. A job larger than `max_rows` on its own is admitted when nothing
//!   else is in flight, and runs alone.
//! - **Running**: rows in one UNet call must share a group (model and latent shape). The group
//!   of the job that has waited longest for a step runs, with every active job of that
//!   group. Since rows in flight never exceed the budget (except a lone oversized job),
//!   every job of the chosen group fits.

/// Rows in one denoiser call must share this: the model and the latent size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// Index of the model among the engine's models.
    pub model: usize,
    /// Latent height.
    pub height: usize,
    /// Latent width.
    pub width: usize,
}

/// An admitted job as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveJob {
    /// The worker's handle for the job.
    pub key: u64,
    /// Rows it adds to a UNet call.
    pub rows: usize,
    /// Its latent shape group.
    pub group: GroupKey,
    /// Tick at which it last ran (or was admitted).
    pub last_ran: u64,
}

/// A job waiting for admission, in queue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingJob {
    /// The worker's handle for the job.
    pub key: u64,
    /// Rows it will add to a UNet call.
    pub rows: usize,
    /// Its latent shape group.
    pub group: GroupKey,
}

/// Why admission stopped this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitStop {
    /// Nobody was waiting (any more).
    QueueEmpty,
    /// The head of the queue does not fit in the remaining row budget.
    BudgetFull,
}

/// What one tick does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Waiting jobs to admit, in queue order.
    pub admit: Vec<u64>,
    /// Jobs (already active or just admitted) whose rows form this tick's UNet call.
    pub run: Vec<u64>,
    /// The group that runs, if any.
    pub group: Option<GroupKey>,
    /// Rows in the UNet call.
    pub rows: usize,
    /// Why admission stopped.
    pub admit_stop: AdmitStop,
}

/// Plans one tick. `tick` is the current tick number, used for fairness between groups.
pub fn plan(active: &[ActiveJob], waiting: &[WaitingJob], max_rows: usize, tick: u64) -> Plan {
    let max_rows = max_rows.max(1);
    let mut in_flight: usize = active.iter().map(|j| j.rows).sum();
    let mut jobs: Vec<ActiveJob> = active.to_vec();
    let mut admit = Vec::new();
    let mut admit_stop = AdmitStop::QueueEmpty;
    for w in waiting {
        let fits = in_flight + w.rows <= max_rows;
        let alone = in_flight == 0 && admit.is_empty();
        if fits || alone {
            admit.push(w.key);
            in_flight += w.rows;
            jobs.push(ActiveJob {
                key: w.key,
                rows: w.rows,
                group: w.group,
                last_ran: tick,
            });
            if !fits {
                admit_stop = AdmitStop::BudgetFull;
                break;
            }
        } else {
            admit_stop = AdmitStop::BudgetFull;
            break;
        }
    }

    // The group whose most-starved job waited longest; ties go to queue order.
    let group = jobs
        .iter()
        .enumerate()
        .min_by_key(|(i, j)| (j.last_ran, *i))
        .map(|(_, j)| j.group);
    let run: Vec<u64> = jobs
        .iter()
        .filter(|j| Some(j.group) == group)
        .map(|j| j.key)
        .collect();
    let rows = jobs
        .iter()
        .filter(|j| Some(j.group) == group)
        .map(|j| j.rows)
        .sum();
    Plan {
        admit,
        run,
        group,
        rows,
        admit_stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: GroupKey = GroupKey {
        model: 0,
        height: 8,
        width: 8,
    };
    const B: GroupKey = GroupKey {
        model: 0,
        height: 8,
        width: 12,
    };
    const C: GroupKey = GroupKey {
        model: 1,
        height: 8,
        width: 8,
    };

    fn w(key: u64, rows: usize, group: GroupKey) -> WaitingJob {
        WaitingJob { key, rows, group }
    }

    fn a(key: u64, rows: usize, group: GroupKey, last_ran: u64) -> ActiveJob {
        ActiveJob {
            key,
            rows,
            group,
            last_ran,
        }
    }

    #[test]
    fn idle_engine_plans_nothing() {
        let p = plan(&[], &[], 8, 0);
        assert!(p.admit.is_empty() && p.run.is_empty());
        assert_eq!(
            (p.group, p.rows, p.admit_stop),
            (None, 0, AdmitStop::QueueEmpty)
        );
    }

    #[test]
    fn admits_fifo_up_to_the_budget_and_never_overtakes_the_head() {
        let waiting = [w(1, 2, A), w(2, 4, A), w(3, 4, A), w(4, 1, A)];
        let p = plan(&[], &waiting, 8, 0);
        // 2 + 4 = 6; job 3 (4 rows) does not fit, and job 4 may not overtake it.
        assert_eq!(p.admit, vec![1, 2]);
        assert_eq!(p.run, vec![1, 2]);
        assert_eq!(p.rows, 6);
        assert_eq!(p.admit_stop, AdmitStop::BudgetFull);
    }

    #[test]
    fn newcomers_join_a_running_batch() {
        let active = [a(1, 2, A, 5)];
        let p = plan(&active, &[w(2, 2, A)], 8, 6);
        assert_eq!(p.admit, vec![2]);
        assert_eq!(p.run, vec![1, 2]);
        assert_eq!(p.rows, 4);
    }

    #[test]
    fn oversized_job_runs_alone_when_idle_and_waits_otherwise() {
        let p = plan(&[], &[w(1, 16, A), w(2, 1, A)], 8, 0);
        assert_eq!(p.admit, vec![1]);
        assert_eq!(p.run, vec![1]);
        assert_eq!(p.rows, 16);
        let p = plan(&[a(9, 1, A, 0)], &[w(1, 16, A), w(2, 1, A)], 8, 1);
        assert!(p.admit.is_empty());
        assert_eq!(p.run, vec![9]);
    }

    #[test]
    fn groups_take_turns_by_longest_wait() {
        let active = [a(1, 2, A, 4), a(2, 2, B, 3), a(3, 2, A, 4)];
        let p = plan(&active, &[], 8, 5);
        assert_eq!(p.group, Some(B));
        assert_eq!(p.run, vec![2]);
        let active = [a(1, 2, A, 4), a(2, 2, B, 5), a(3, 2, A, 4)];
        let p = plan(&active, &[], 8, 6);
        assert_eq!(p.group, Some(A));
        assert_eq!(p.run, vec![1, 3]);
        assert_eq!(p.rows, 4);
    }

    #[test]
    fn models_never_share_a_call() {
        let active = [a(1, 2, A, 4), a(2, 2, C, 4), a(3, 2, A, 4)];
        let p = plan(&active, &[], 8, 5);
        assert_eq!((p.group, p.run.clone()), (Some(A), vec![1, 3]));
        let active = [a(1, 2, A, 5), a(2, 2, C, 4), a(3, 2, A, 5)];
        let p = plan(&active, &[], 8, 6);
        assert_eq!((p.group, p.run), (Some(C), vec![2]));
    }

    #[test]
    fn zero_budget_is_treated_as_one_row() {
        let p = plan(&[], &[w(1, 2, A), w(2, 1, A)], 0, 0);
        assert_eq!(p.admit, vec![1]);
    }
}
