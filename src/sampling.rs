//! Head sampling per the OpenTelemetry SDK specification: `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`. A plain value, so derivation stays pure: the decision is a
//! function of the sampler, the parent's decision and the trace id alone.
//!
//! The parent's decision is X-Ray's `Sampled` flag for an invocation, or the caller's
//! `traceparent` flags for a token span. With Active tracing X-Ray records about one
//! request a second plus 5%, so following it (the default, `parentbased_always_on`) keeps
//! invocation spans from hanging under segments that were never recorded.

use opentelemetry::trace::TraceId;

use crate::config::ConfigError;

const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
const ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";

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
    /// Reads `OTEL_TRACES_SAMPLER` (case-insensitive, as the spec says of enum values) and,
    /// for the ratio samplers, `OTEL_TRACES_SAMPLER_ARG` (default 1.0). Unlike the spec's
    /// "warn and use the default", an invalid value is a config error: silently exporting
    /// every trace (or none) is the surprise an operator pays for.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Sampler, ConfigError> {
        let name = match lookup(SAMPLER_VAR) {
            Some(v) if !v.trim().is_empty() => v,
            _ => return Ok(Sampler::default()),
        };
        let ratio = || -> Result<f64, ConfigError> {
            match lookup(ARG_VAR) {
                Some(arg) if !arg.trim().is_empty() => match arg.trim().parse::<f64>() {
                    Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                    _ => Err(ConfigError::Invalid {
                        var: ARG_VAR,
                        value: arg,
                        expected: "a sampling probability between 0 and 1, e.g. 0.25".to_owned(),
                    }),
                },
                _ => Ok(1.0),
            }
        };
        let (parent_based, root) = match name.trim().to_ascii_lowercase().as_str() {
            "always_on" => (false, Root::AlwaysOn),
            "always_off" => (false, Root::AlwaysOff),
            "traceidratio" => (false, Root::Ratio(ratio()?)),
            "parentbased_always_on" => (true, Root::AlwaysOn),
            "parentbased_always_off" => (true, Root::AlwaysOff),
            "parentbased_traceidratio" => (true, Root::Ratio(ratio()?)),
            _ => {
                return Err(ConfigError::Invalid {
                    var: SAMPLER_VAR,
                    value: name,
                    expected: "always_on, always_off, traceidratio, parentbased_always_on, \
                               parentbased_always_off or parentbased_traceidratio"
                        .to_owned(),
                });
            }
        };
        Ok(Sampler { parent_based, root })
    }

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Sampler, ConfigError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Sampler::parse(|k| map.get(k).map(|v| (*v).to_owned()))
    }

    fn id(hex: &str) -> TraceId {
        TraceId::from_hex(hex).unwrap()
    }

    #[test]
    fn each_sampler_value() {
        let ratio = |r| Root::Ratio(r);
        for (name, arg, parent_based, root) in [
            ("always_on", None, false, Root::AlwaysOn),
            ("always_off", None, false, Root::AlwaysOff),
            ("traceidratio", Some("0.25"), false, ratio(0.25)),
            ("traceidratio", None, false, ratio(1.0)),
            ("parentbased_always_on", None, true, Root::AlwaysOn),
            ("ParentBased_Always_Off", None, true, Root::AlwaysOff),
            ("parentbased_traceidratio", Some(" 0 "), true, ratio(0.0)),
        ] {
            let mut vars = vec![("OTEL_TRACES_SAMPLER", name)];
            vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
            assert_eq!(
                parse(&vars).unwrap(),
                Sampler { parent_based, root },
                "{name} {arg:?}"
            );
        }
        assert_eq!(parse(&[]).unwrap(), Sampler::default());
        assert_eq!(
            parse(&[("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap(),
            Sampler::default(),
            "the argument alone changes nothing"
        );

        let t = id("4bf92f3577b34da6a3ce929d0e0e4736");
        let decisions = |sampler: Sampler| {
            [None, Some(true), Some(false)].map(|parent| sampler.decide(parent, t))
        };
        let named = |name: &str| parse(&[("OTEL_TRACES_SAMPLER", name)]).unwrap();
        assert_eq!(decisions(named("always_on")), [true, true, true]);
        assert_eq!(decisions(named("always_off")), [false, false, false]);
        assert_eq!(
            decisions(named("parentbased_always_on")),
            [true, true, false]
        );
        assert_eq!(
            decisions(named("parentbased_always_off")),
            [false, true, false]
        );
        let zero = |name: &str| {
            parse(&[
                ("OTEL_TRACES_SAMPLER", name),
                ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ])
            .unwrap()
        };
        assert_eq!(decisions(zero("traceidratio")), [false, false, false]);
        assert_eq!(
            decisions(zero("parentbased_traceidratio")),
            [false, true, false]
        );
    }

    #[test]
    fn invalid_values_name_the_variable_and_what_it_accepts() {
        for (vars, needle) in [
            (
                vec![("OTEL_TRACES_SAMPLER", "xray")],
                "OTEL_TRACES_SAMPLER=\"xray\" is not valid: expected always_on, always_off, \
                 traceidratio",
            ),
            (
                vec![
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                "OTEL_TRACES_SAMPLER_ARG=\"1.5\" is not valid: expected a sampling probability",
            ),
            (
                vec![
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "NaN"),
                ],
                "OTEL_TRACES_SAMPLER_ARG=\"NaN\"",
            ),
        ] {
            let error = parse(&vars).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
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
