//! The batch planner: a pure function from queue state to what the next tick does.
//!
//! Rules (kept simple so they are easy to reason about under load):
//! - **Admission** is first-in, first-out. A waiting job joins while what its group
//!   has in flight stays within the [`Budget`]: rows, and rows x latent pixels (so
//!   small latents batch more rows than large ones). The budget bounds one call, and
//!   groups run in separate calls, so a group that fills it never keeps another group
//!   out: a 32x32 job joins beside a 1024x1024 one. The head of the queue is never
//!   overtaken, so a big job cannot starve. A job larger than the budget on its own is
//!   admitted when its group has nothing in flight, and runs alone in its calls.
//! - **Running**: rows in one UNet call must share a group (model and latent shape). Groups
//!   share the device by the time their calls took (a [`Ledger`] of each group's service):
//!   the least-served group runs, with every active job of that group, so a 32x32 job
//!   takes many quick steps for each 20-second step of a 1024x1024 job instead of one
//!   (deficit round robin by cost; ties go to the group whose job waited longest). A group
//!   that appears starts level with the least-served one, banking no credit while idle.
//!   Since a group's rows in flight never exceed the budget (except a lone oversized
//!   job), every job of the chosen group fits in its call.

use std::collections::HashMap;

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

impl GroupKey {
    /// The group of model `model`'s latents of `height` x `width`.
    pub const fn new(model: usize, height: usize, width: usize) -> Self {
        Self {
            model,
            height,
            width,
        }
    }
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
    /// Tick at which it last ran (0: not yet).
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
    /// The head of the queue does not fit in its group's remaining budget.
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

/// The service shape groups have had: the microseconds their calls took.
///
/// A group that (re)joins starts one call of the costliest active group behind the
/// least-served active group, never below what it had when it left: a 32x32 job that
/// arrives while a 1024x1024 job runs gets up to one of the large job's calls' worth of
/// steps before the large job runs again (so it does not wait a large step per turn),
/// and a client that sends small jobs one after another cannot starve the large one,
/// since its group keeps what it was served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Service per group, kept for a while after the group's last job left.
    served: HashMap<GroupKey, u64>,
    /// The cost of each active group's last call.
    last_call: HashMap<GroupKey, u64>,
    /// The groups with jobs, as of the last [`Ledger::sync`].
    active: Vec<GroupKey>,
}

impl Ledger {
    /// The service `group` has had, or for a group that is not active, what it would
    /// start with.
    pub fn served(&self, group: GroupKey) -> u64 {
        if self.active.contains(&group) {
            return self.served.get(&group).copied().unwrap_or(0);
        }
        self.joining(group)
    }

    /// Where a joining group starts.
    fn joining(&self, group: GroupKey) -> u64 {
        let floor = self.joining_floor();
        self.served.get(&group).copied().unwrap_or(0).max(floor)
    }

    /// Adds a call's cost (microseconds) to `group`'s service.
    pub fn charge(&mut self, group: GroupKey, cost: u64) {
        let start = self.served(group);
        self.served.insert(group, start.saturating_add(cost));
        self.last_call.insert(group, cost);
    }

    /// Makes `groups` (those with jobs) the active ones: joining groups start as
    /// [`Ledger::served`] says; records far behind every active group are dropped.
    pub fn sync(&mut self, groups: &[GroupKey]) {
        let mut joined = Vec::new();
        for &g in groups {
            if !self.active.contains(&g) && !joined.iter().any(|(j, _)| *j == g) {
                joined.push((g, self.joining(g)));
            }
        }
        self.active = groups.to_vec();
        self.active.dedup();
        for (g, start) in joined {
            self.served.insert(g, start);
        }
        self.last_call.retain(|g, _| groups.contains(g));
        let floor = self.joining_floor();
        self.served.retain(|g, s| groups.contains(g) || *s > floor);
    }

    /// The least a joining group starts with now.
    fn joining_floor(&self) -> u64 {
        let least = self
            .active
            .iter()
            .filter_map(|g| self.served.get(g))
            .copied()
            .min()
            .unwrap_or(0);
        least.saturating_sub(self.last_call.values().copied().max().unwrap_or(0))
    }
}

/// What may be in flight at once on one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Rows (a guided image is 2).
    pub rows: usize,
    /// Rows x latent height x latent width.
    pub latent_pixels: usize,
}

impl Budget {
    /// A budget of rows alone.
    pub fn rows(rows: usize) -> Self {
        Self {
            rows,
            latent_pixels: usize::MAX,
        }
    }

    /// Whether `load` stays within the budget.
    fn holds(&self, load: Load) -> bool {
        load.rows <= self.rows.max(1) && load.latent_pixels <= self.latent_pixels
    }
}

/// Rows x latent pixels of `rows` rows of `group`.
pub fn latent_pixels(rows: usize, group: GroupKey) -> usize {
    rows.saturating_mul(group.height)
        .saturating_mul(group.width)
}

/// Rows and rows x latent pixels, the two measures a [`Budget`] bounds.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    rows: usize,
    latent_pixels: usize,
}

impl Load {
    /// This load plus `rows` rows of `group`.
    fn plus(self, rows: usize, group: GroupKey) -> Self {
        Self {
            rows: self.rows + rows,
            latent_pixels: self
                .latent_pixels
                .saturating_add(latent_pixels(rows, group)),
        }
    }
}

/// Plans one tick; `ledger` holds the groups' service. Groups in `blocked` are
/// admitted to as usual but do not run this tick (a long call of theirs, or one beside
/// which they would be too long, is in progress).
pub fn plan(
    active: &[ActiveJob],
    waiting: &[WaitingJob],
    budget: Budget,
    ledger: &Ledger,
    blocked: &[GroupKey],
) -> Plan {
    // What each group has in flight: groups run in separate calls, so the budget
    // bounds each group's call, and a large group never keeps a small one out.
    let mut in_flight: HashMap<GroupKey, Load> = HashMap::new();
    for j in active {
        let load = in_flight.entry(j.group).or_default();
        *load = load.plus(j.rows, j.group);
    }
    let mut jobs: Vec<ActiveJob> = active.to_vec();
    let mut admit = Vec::new();
    let mut admit_stop = AdmitStop::QueueEmpty;
    for w in waiting {
        let load = in_flight.get(&w.group).copied().unwrap_or_default();
        let fits = budget.holds(load.plus(w.rows, w.group));
        if !fits && load.rows > 0 {
            // The head does not fit beside its group's jobs: it waits, and nobody
            // behind it overtakes it.
            admit_stop = AdmitStop::BudgetFull;
            break;
        }
        // It fits, or it is larger than the budget on its own and its group is
        // empty: then it runs alone in its group's calls.
        admit.push(w.key);
        in_flight.insert(w.group, load.plus(w.rows, w.group));
        jobs.push(ActiveJob {
            key: w.key,
            rows: w.rows,
            group: w.group,
            // Never ran: it wins a tie on service against groups that have.
            last_ran: 0,
        });
    }

    // The least-served group; ties go to the group whose most-starved job waited
    // longest, then to queue order.
    let group = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| !blocked.contains(&j.group))
        .min_by_key(|(i, j)| (ledger.served(j.group), j.last_ran, *i))
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

    const A: GroupKey = GroupKey::new(0, 8, 8);
    const B: GroupKey = GroupKey::new(0, 8, 12);
    const C: GroupKey = GroupKey::new(1, 8, 8);

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
        let p = plan(&[], &[], Budget::rows(8), &Ledger::default(), &[]);
        assert!(p.admit.is_empty() && p.run.is_empty());
        assert_eq!(
            (p.group, p.rows, p.admit_stop),
            (None, 0, AdmitStop::QueueEmpty)
        );
    }

    #[test]
    fn admits_fifo_up_to_the_budget_and_never_overtakes_the_head() {
        let waiting = [w(1, 2, A), w(2, 4, A), w(3, 4, A), w(4, 1, A)];
        let p = plan(&[], &waiting, Budget::rows(8), &Ledger::default(), &[]);
        // 2 + 4 = 6; job 3 (4 rows) does not fit, and job 4 may not overtake it.
        assert_eq!(p.admit, vec![1, 2]);
        assert_eq!(p.run, vec![1, 2]);
        assert_eq!(p.rows, 6);
        assert_eq!(p.admit_stop, AdmitStop::BudgetFull);
    }

    #[test]
    fn newcomers_join_a_running_batch() {
        let active = [a(1, 2, A, 5)];
        let p = plan(
            &active,
            &[w(2, 2, A)],
            Budget::rows(8),
            &Ledger::default(),
            &[],
        );
        assert_eq!(p.admit, vec![2]);
        assert_eq!(p.run, vec![1, 2]);
        assert_eq!(p.rows, 4);
    }

    #[test]
    fn oversized_job_runs_alone_when_idle_and_waits_otherwise() {
        let p = plan(
            &[],
            &[w(1, 16, A), w(2, 1, A)],
            Budget::rows(8),
            &Ledger::default(),
            &[],
        );
        assert_eq!(p.admit, vec![1]);
        assert_eq!(p.run, vec![1]);
        assert_eq!(p.rows, 16);
        let p = plan(
            &[a(9, 1, A, 0)],
            &[w(1, 16, A), w(2, 1, A)],
            Budget::rows(8),
            &Ledger::default(),
            &[],
        );
        assert!(p.admit.is_empty());
        assert_eq!(p.run, vec![9]);
    }

    #[test]
    fn groups_take_turns_by_longest_wait() {
        let active = [a(1, 2, A, 4), a(2, 2, B, 3), a(3, 2, A, 4)];
        let p = plan(&active, &[], Budget::rows(8), &Ledger::default(), &[]);
        assert_eq!(p.group, Some(B));
        assert_eq!(p.run, vec![2]);
        let active = [a(1, 2, A, 4), a(2, 2, B, 5), a(3, 2, A, 4)];
        let p = plan(&active, &[], Budget::rows(8), &Ledger::default(), &[]);
        assert_eq!(p.group, Some(A));
        assert_eq!(p.run, vec![1, 3]);
        assert_eq!(p.rows, 4);
    }

    #[test]
    fn models_never_share_a_call() {
        let active = [a(1, 2, A, 4), a(2, 2, C, 4), a(3, 2, A, 4)];
        let p = plan(&active, &[], Budget::rows(8), &Ledger::default(), &[]);
        assert_eq!((p.group, p.run.clone()), (Some(A), vec![1, 3]));
        let active = [a(1, 2, A, 5), a(2, 2, C, 4), a(3, 2, A, 5)];
        let p = plan(&active, &[], Budget::rows(8), &Ledger::default(), &[]);
        assert_eq!((p.group, p.run), (Some(C), vec![2]));
    }

    #[test]
    fn the_least_served_group_runs_so_small_jobs_pass_big_ones() {
        let big = GroupKey::new(0, 128, 128);
        let mut ledger = Ledger::default();
        let mut active = vec![a(1, 2, big, 0), a(2, 2, A, 0)];
        let mut runs = Vec::new();
        for tick in 1..=12 {
            let p = plan(&active, &[], Budget::rows(8), &ledger, &[]);
            ledger.sync(&[big, A]);
            let group = p.group.unwrap();
            // A big step costs 100 times a small one.
            ledger.charge(group, if group == big { 1000 } else { 10 });
            for j in active.iter_mut().filter(|j| j.group == group) {
                j.last_ran = tick;
            }
            runs.push(if group == big { 'B' } else { 's' });
        }
        // The big job's turn came first (queue order); then the small one runs until it
        // has had as much time.
        assert_eq!(runs.iter().collect::<String>(), "Bsssssssssss");
        // Served: big 1000, A 110. A group that joins now starts one big call (1000)
        // behind the least-served: at 0 (saturating), so it runs before both.
        let late = B;
        assert_eq!(ledger.served(late), 0);
        active.push(a(3, 1, late, 0));
        let p = plan(&active, &[], Budget::rows(8), &ledger, &[]);
        assert_eq!(p.group, Some(late));
        ledger.sync(&[big, A, late]);
        ledger.charge(late, 2000);
        // Now late (2000) is served most; A (110) and big (1000) come first.
        assert_eq!(
            plan(&active, &[], Budget::rows(8), &ledger, &[]).group,
            Some(A)
        );
        // When late's jobs leave and come back, it keeps what it had: no fresh credit
        // for a client that sends one small job after another.
        active.pop();
        ledger.sync(&[big, A]);
        assert_eq!(ledger.served(late), 2000);
        // A newcomer that never ran wins a tie on service.
        let p = plan(&active, &[w(4, 1, C)], Budget::rows(8), &ledger, &[]);
        assert_eq!(ledger.served(C), 0);
        assert_eq!(p.group, Some(C));
    }

    #[test]
    fn blocked_groups_are_admitted_to_but_do_not_run() {
        let active = [a(1, 2, A, 1), a(2, 2, B, 4)];
        // A is the least served (it waited longest) but blocked: B runs.
        let p = plan(
            &active,
            &[w(3, 2, A)],
            Budget::rows(8),
            &Ledger::default(),
            &[A],
        );
        assert_eq!(p.admit, vec![3]);
        assert_eq!((p.group, p.run, p.rows), (Some(B), vec![2], 2));
        // Every group blocked: nothing runs.
        let p = plan(&active, &[], Budget::rows(8), &Ledger::default(), &[A, B]);
        assert_eq!((p.group, p.rows), (None, 0));
        assert!(p.run.is_empty());
    }

    #[test]
    fn zero_budget_is_treated_as_one_row() {
        let p = plan(
            &[],
            &[w(1, 2, A), w(2, 1, A)],
            Budget::rows(0),
            &Ledger::default(),
            &[],
        );
        assert_eq!(p.admit, vec![1]);
    }

    #[test]
    fn latent_pixels_bound_large_latents_and_let_small_ones_batch() {
        // C: 8x8 latents (64 pixels a row); SMALL: 4x4 (16); TINY: 2x2 (4).
        const SMALL: GroupKey = GroupKey::new(0, 4, 4);
        const TINY: GroupKey = GroupKey::new(0, 2, 2);
        let budget = Budget {
            rows: 32,
            latent_pixels: 8 * 64,
        };
        let p = plan(
            &[],
            &[w(1, 4, C), w(2, 4, C), w(3, 2, C)],
            budget,
            &Ledger::default(),
            &[],
        );
        assert_eq!((p.admit, p.admit_stop), (vec![1, 2], AdmitStop::BudgetFull));
        let small: Vec<WaitingJob> = (0..17).map(|k| w(k, 2, SMALL)).collect();
        let p = plan(&[], &small, budget, &Ledger::default(), &[]);
        assert_eq!(p.admit.len(), 16);
        assert_eq!(p.rows, 32);
        // The row budget still holds for the smallest latents.
        let many: Vec<WaitingJob> = (0..20).map(|k| w(k, 2, TINY)).collect();
        assert_eq!(plan(&[], &many, budget, &Ledger::default(), &[]).rows, 32);
    }

    #[test]
    fn a_group_that_fills_the_budget_keeps_no_other_group_out() {
        // BIG: 16x16 latents, two rows of them fill the latent-pixel budget.
        const BIG: GroupKey = GroupKey::new(0, 16, 16);
        let budget = Budget {
            rows: 32,
            latent_pixels: 2 * 16 * 16,
        };
        let active = [a(1, 2, BIG, 3)];
        // A small job joins beside the full group and runs first (never served).
        let p = plan(&active, &[w(2, 2, A)], budget, &Ledger::default(), &[]);
        assert_eq!(p.admit, vec![2]);
        assert_eq!((p.group, p.run), (Some(A), vec![2]));
        // A second big job waits for its group's room, and the small job behind it
        // does not overtake it.
        let p = plan(
            &active,
            &[w(3, 2, BIG), w(4, 2, A)],
            budget,
            &Ledger::default(),
            &[],
        );
        assert_eq!((p.admit, p.admit_stop), (vec![], AdmitStop::BudgetFull));
        // Each group's call stays within the budget: of three big jobs arriving
        // together beside small ones, one is admitted.
        let p = plan(
            &[],
            &[w(5, 2, A), w(6, 2, BIG), w(7, 2, B), w(8, 2, BIG)],
            budget,
            &Ledger::default(),
            &[],
        );
        assert_eq!(
            (p.admit, p.admit_stop),
            (vec![5, 6, 7], AdmitStop::BudgetFull)
        );
        // A job larger than the budget runs alone in its group, beside the others.
        let p = plan(
            &[a(9, 2, A, 1)],
            &[w(10, 4, BIG)],
            budget,
            &Ledger::default(),
            &[],
        );
        assert_eq!(p.admit, vec![10]);
        assert_eq!((p.group, p.run), (Some(BIG), vec![10]));
    }
}
