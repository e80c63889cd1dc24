//! Head sampling per the OpenTelemetry SDK specification, as `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` configure it (`config` reads them). A plain value, so derivation
//! stays pure: the decision is a function of the sampler, the parent's decision and the
//! trace id alone.
//!
//! The parent's decision is X-Ray's `Sampled` flag for an invocation, or the caller's
//! `traceparent` flags for a token span. With Active tracing X-Ray records about one
//! request a second plus 5%, so following it (the default, `parentbased_always_on`) keeps
//! invocation spans from hanging under segments that were never recorded.
//!
//! Also which incoming trace contexts are believed at all ([`Propagators`],
//! `OTEL_PROPAGATORS`).

use opentelemetry::trace::TraceId;

/// Decides for a span without a parent decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// TraceIdRatioBased with this probability in [0, 1].
    Ratio(f64),
}

/// The configured sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// `parentbased_*`: a parent's decision, when there is one, wins over `root`.
    pub parent_based: bool,
    pub root: Root,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the spec's default.
    fn default() -> Self {
        Sampler {
            parent_based: true,
            root: Root::AlwaysOn,
        }
    }
}

impl Sampler {
    /// Whether a span in `trace_id` is sampled, given its parent's decision (`None`: no
    /// parent, or one that left the decision open, as X-Ray's `Sampled=?`).
    pub fn decide(self, parent: Option<bool>, trace_id: TraceId) -> bool {
        match (self.parent_based, parent) {
            (true, Some(sampled)) => sampled,
            _ => match self.root {
                Root::AlwaysOn => true,
                Root::AlwaysOff => false,
                Root::Ratio(ratio) => ratio_samples(ratio, trace_id),
            },
        }
    }
}

/// TraceIdRatioBased, deterministic on the trace id as the spec recommends, so every
/// environment of a fleet (and any other process using the same rule) agrees on a trace:
/// the randomness is the trace id's least-significant 56 bits (random in W3C level 2 ids
/// and in the 96 random bits of an X-Ray root; its leading epoch seconds are not), and a
/// trace is kept when that value is at least the rejection threshold `(1 - ratio) * 2^56`.
/// A trace kept at one ratio is kept at every higher one.
fn ratio_samples(ratio: f64, trace_id: TraceId) -> bool {
    const RANDOM_BITS: u32 = 56;
    let span = (1u64 << RANDOM_BITS) as f64;
    // Saturating float-to-int casts: ratio 1 gives threshold 0 (keep all), 0 gives 2^56.
    let threshold = ((1.0 - ratio) * span).round() as u64;
    let randomness =
        (u128::from_be_bytes(trace_id.to_bytes()) as u64) & ((1u64 << RANDOM_BITS) - 1);
    randomness >= threshold
}

/// Which incoming trace-context formats the sidecar reads (`OTEL_PROPAGATORS`): the two
/// it has parsers for. `tracecontext`: a `/token` caller's `traceparent`, which makes the
/// token span its child. `xray`: the X-Ray context Lambda hands over with INVOKE and the
/// platform events, which puts the invocation span (and the function's log records) in the
/// function's X-Ray trace. Both by default: the sidecar reads trace context only, it
/// injects none, so what a propagator list decides here is which parents are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagators {
    pub tracecontext: bool,
    pub xray: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Propagators {
            tracecontext: true,
            xray: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex: &str) -> TraceId {
        TraceId::from_hex(hex).unwrap()
    }

    #[test]
    fn each_sampler_decides() {
        let t = id("4bf92f3577b34da6a3ce929d0e0e4736");
        let decisions = |parent_based: bool, root: Root| {
            let sampler = Sampler { parent_based, root };
            [None, Some(true), Some(false)].map(|parent| sampler.decide(parent, t))
        };
        assert_eq!(decisions(false, Root::AlwaysOn), [true, true, true]);
        assert_eq!(decisions(false, Root::AlwaysOff), [false, false, false]);
        assert_eq!(decisions(true, Root::AlwaysOn), [true, true, false]);
        assert_eq!(decisions(true, Root::AlwaysOff), [false, true, false]);
        assert_eq!(decisions(false, Root::Ratio(0.0)), [false, false, false]);
        assert_eq!(decisions(true, Root::Ratio(0.0)), [false, true, false]);
        assert_eq!(
            Sampler::default(),
            Sampler {
                parent_based: true,
                root: Root::AlwaysOn
            }
        );
    }

    /// The decision depends on the trace id's low 56 bits only, is the same every time,
    /// and is monotonic in the ratio.
    #[test]
    fn ratio_is_deterministic_on_the_trace_id() {
        let sampler = |r| Sampler {
            parent_based: false,
            root: Root::Ratio(r),
        };
        // Randomness 0x40…0 is exactly a quarter of 2^56: kept from ratio 0.75 on.
        let quarter = id("ffffffffffffffffff40000000000000");
        let decide = |r: f64| sampler(r).decide(None, quarter);
        assert_eq!(
            [0.0, 0.5, 0.74, 0.75, 1.0].map(decide),
            [false, false, false, true, true]
        );
        // The high 72 bits (X-Ray's epoch seconds among them) play no part.
        let low = id("00000000000000000040000000000000");
        assert_eq!(decide(0.75), sampler(0.75).decide(None, low));
        assert!(!sampler(0.74).decide(None, low));
        // Over many ids, the same decisions on every call, and about the ratio kept.
        let ids: Vec<TraceId> = (0u64..4000)
            .map(|i| TraceId::from(u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
            .collect();
        let kept = |r: f64| ids.iter().filter(|t| sampler(r).decide(None, **t)).count();
        assert_eq!(kept(0.25), kept(0.25));
        assert!((900..=1100).contains(&kept(0.25)), "{}", kept(0.25));
        for t in &ids {
            assert!(!sampler(0.1).decide(None, *t) || sampler(0.2).decide(None, *t));
        }
    }
}
