//! The OTLP receiver (`SIDECAR_OTLP_RECEIVER*`): whether the function's own telemetry is
//! taken on loopback, and where.

use std::net::{Ipv4Addr, SocketAddr};

use super::ConfigError;
use super::lookup::Env;

/// The OTLP/HTTP port the OpenTelemetry SDKs send to by default, on loopback: a function
/// whose SDK is left at its defaults exports to the sidecar with no configuration.
pub const DEFAULT_RECEIVER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4318);

/// Where the receiver listens, when it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// A loopback address and a non-zero port (`SIDECAR_OTLP_RECEIVER_ADDR`, default
    /// [`DEFAULT_RECEIVER_ADDR`]).
    pub addr: SocketAddr,
    /// The address was set: a failure to bind it stops start-up. At the default, another
    /// extension (an OpenTelemetry collector layer) may hold the port, and the sidecar runs on
    /// without its receiver rather than fail the function's init.
    pub explicit: bool,
}

/// `SIDECAR_OTLP_RECEIVER` (`on`, the default, or `off`) and `SIDECAR_OTLP_RECEIVER_ADDR`.
/// Only loopback addresses are accepted: the function is the only writer the receiver is
/// for (SECURITY.md), and a wildcard address would let the network write too.
pub(super) fn receiver_config(env: &Env<'_>) -> Result<Option<ReceiverConfig>, ConfigError> {
    if !env.choice(
        "SIDECAR_OTLP_RECEIVER",
        &[("on", true), ("off", false)],
        true,
    )? {
        return Ok(None);
    }
    let Some(raw) = env.get("SIDECAR_OTLP_RECEIVER_ADDR") else {
        return Ok(Some(ReceiverConfig {
            addr: DEFAULT_RECEIVER_ADDR,
            explicit: false,
        }));
    };
    raw.trim()
        .parse::<SocketAddr>()
        .ok()
        .filter(|addr| addr.port() != 0 && addr.ip().is_loopback())
        .map(|addr| {
            Some(ReceiverConfig {
                addr,
                explicit: true,
            })
        })
        .ok_or_else(|| ConfigError::Invalid {
            var: "SIDECAR_OTLP_RECEIVER_ADDR",
            value: raw,
            expected: "a loopback address and a port from 1 to 65535, such as 127.0.0.1:4318 \
                       or [::1]:4318"
                .to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<ReceiverConfig>, ConfigError> {
        let lookup = |k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        receiver_config(&Env(&lookup))
    }

    #[test]
    fn the_receiver_is_on_at_4318_by_default_and_loopback_only() {
        let default = parse(&[]).unwrap().unwrap();
        assert_eq!(default.addr, "127.0.0.1:4318".parse().unwrap());
        assert!(!default.explicit);
        assert_eq!(parse(&[("SIDECAR_OTLP_RECEIVER", "off")]).unwrap(), None);
        let set = parse(&[("SIDECAR_OTLP_RECEIVER_ADDR", "[::1]:4400")])
            .unwrap()
            .unwrap();
        assert_eq!((set.addr.port(), set.explicit), (4400, true));
        for refused in [
            "0.0.0.0:4318",
            "10.0.0.1:4318",
            "127.0.0.1:0",
            "localhost:4318",
        ] {
            let err = parse(&[("SIDECAR_OTLP_RECEIVER_ADDR", refused)]).unwrap_err();
            assert!(
                err.to_string().contains("SIDECAR_OTLP_RECEIVER_ADDR")
                    && err.to_string().contains("loopback"),
                "{refused}: {err}"
            );
        }
        let err = parse(&[("SIDECAR_OTLP_RECEIVER", "yes")]).unwrap_err();
        assert!(err.to_string().contains("SIDECAR_OTLP_RECEIVER"), "{err}");
    }
}
