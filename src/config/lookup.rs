//! Typed reads of one variable through a lookup function, shared by every domain.

use super::{ConfigError, RESERVED_PORTS};

/// Typed accessors over a lookup function; each error names its variable.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    pub(super) fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
    }

    pub(super) fn number(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::Invalid {
                var,
                value: raw,
                expected: format!("a whole number from {min} to {max}"),
            }),
        }
    }

    pub(super) fn port(&self, var: &'static str, default: u16) -> Result<u16, ConfigError> {
        let port = self.number(var, u64::from(default), 1, 65_535)? as u16;
        if RESERVED_PORTS.contains(&port) {
            return Err(ConfigError::Invalid {
                var,
                value: port.to_string(),
                expected: format!(
                    "a port from 1 to 65535 other than {} (taken by Lambda or common extensions)",
                    RESERVED_PORTS
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(port)
    }

    pub(super) fn choice<T: Copy>(
        &self,
        var: &'static str,
        options: &[(&str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(raw.trim()))
            .map(|(_, v)| *v)
            .ok_or_else(|| ConfigError::Invalid {
                var,
                value: raw,
                expected: format!(
                    "one of {}",
                    options
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    pub(super) fn non_empty(
        &self,
        var: &'static str,
        default: &str,
    ) -> Result<String, ConfigError> {
        let value = self.get(var).unwrap_or_else(|| default.to_string());
        if value.trim().is_empty() || value.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Invalid {
                var,
                value,
                expected: "a non-empty string without control characters".to_string(),
            });
        }
        Ok(value)
    }

    /// A comma-separated list; blanks around items and empty items are ignored.
    pub(super) fn list(&self, var: &str) -> Vec<String> {
        self.get(var)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}
