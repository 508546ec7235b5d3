//! Criterion benches live in `benches/`; this library holds what the benchmark programs share.
#![forbid(unsafe_code)]

pub mod fed_common;

/// How much work a run of the benchmark programs does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The published figures: every measurement long enough to be stable.
    Full,
    /// A fifth to a tenth of the work (`--quick`): for comparisons by hand, noisier.
    Quick,
    /// A handful of iterations of everything (`--smoke`): shows that every section still
    /// runs to the end; its figures mean nothing.
    Smoke,
}

impl Scale {
    /// Iterations of a smoke run at least.
    pub const SMOKE_MIN: usize = 20;

    /// `full` in a full run, `quick` in a quick one, and a hundredth of `quick` (at least
    /// [`SMOKE_MIN`](Self::SMOKE_MIN), at most `quick`) in a smoke run.
    #[must_use]
    pub fn pick(self, full: usize, quick: usize) -> usize {
        match self {
            Self::Full => full,
            Self::Quick => quick,
            Self::Smoke => (quick / 100).max(Self::SMOKE_MIN).min(quick),
        }
    }

    /// The name reported in the JSON output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Quick => "quick",
            Self::Smoke => "smoke",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scale;

    #[test]
    fn each_scale_picks_its_own_count() {
        assert_eq!(Scale::Full.pick(200_000, 20_000), 200_000);
        assert_eq!(Scale::Quick.pick(200_000, 20_000), 20_000);
        assert_eq!(Scale::Smoke.pick(200_000, 20_000), 200);
        assert_eq!(Scale::Smoke.pick(1_000, 100), Scale::SMOKE_MIN);
        assert_eq!(Scale::Smoke.pick(10, 5), 5, "never more than a quick run");
    }
}
