//! The function being observed: what Lambda tells every extension about it, and the
//! semantic-convention attributes derived from that.

use opentelemetry::KeyValue;

use super::MIB;

/// The function being observed, from the environment Lambda gives every extension.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionInfo {
    /// `AWS_LAMBDA_FUNCTION_NAME`: the invocation spans' name (`faas.name`).
    pub name: String,
    /// `AWS_LAMBDA_FUNCTION_VERSION` (`faas.version`).
    pub version: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION` (`cloud.region`).
    pub region: Option<String>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in MB (`faas.max_memory`, in bytes).
    pub memory_mb: Option<u64>,
    /// `AWS_LAMBDA_LOG_STREAM_NAME`: identifies the execution environment (`faas.instance`).
    pub log_stream: Option<String>,
}

impl FunctionInfo {
    /// Reads the Lambda variables through `var` (e.g. `|k| std::env::var(k).ok()`), so
    /// tests need no process environment. Missing, empty or unparsable values are left
    /// out rather than refused: they are Lambda's to set, not the user's.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let present = |key: &str| var(key).filter(|value| !value.is_empty());
        FunctionInfo {
            name: present("AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or_else(|| "unknown_function".to_owned()),
            version: present("AWS_LAMBDA_FUNCTION_VERSION"),
            region: present("AWS_REGION").or_else(|| present("AWS_DEFAULT_REGION")),
            memory_mb: present("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .and_then(|mb| mb.trim().parse().ok()),
            log_stream: present("AWS_LAMBDA_LOG_STREAM_NAME"),
        }
    }

    /// `faas.max_memory`: the configured memory in bytes.
    pub fn max_memory_bytes(&self) -> Option<i64> {
        i64::try_from(self.memory_mb?.checked_mul(MIB)?).ok()
    }

    /// Attributes every derived span carries (FaaS and cloud semantic conventions); also
    /// the OTel resource's, in `export::resource`.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut attributes = vec![
            KeyValue::new("faas.name", self.name.clone()),
            KeyValue::new("cloud.provider", "aws"),
            KeyValue::new("cloud.platform", "aws_lambda"),
        ];
        let optional = [
            ("faas.version", &self.version),
            ("cloud.region", &self.region),
            ("faas.instance", &self.log_stream),
        ];
        attributes.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some(KeyValue::new(key, value.clone()?))),
        );
        if let Some(bytes) = self.max_memory_bytes() {
            attributes.push(KeyValue::new("faas.max_memory", bytes));
        }
        attributes
    }
}
