//! What Lambda sets in every execution environment: the function's identity
//! ([`FunctionInfo`]), the Runtime API's address and the initialization type. They are
//! Lambda's to set, not the user's, so nothing here is refused: [`Lambda`] is readable when
//! the rest of the configuration is not, as the extension needs it to register and then
//! report that configuration's error through `init/error`.

use super::ProcessEnv;
use crate::function::FunctionInfo;

const RUNTIME_API_VAR: &str = "AWS_LAMBDA_RUNTIME_API";

/// What Lambda says about this execution environment. Never fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Lambda {
    /// `AWS_LAMBDA_RUNTIME_API`, as set: where the Extensions API is. Unset outside Lambda.
    pub runtime_api: Option<String>,
    pub function: FunctionInfo,
}

impl Lambda {
    /// [`Lambda::parse`] of the process environment.
    pub fn from_env() -> Lambda {
        let env = ProcessEnv::read();
        Lambda::parse(|k| env.get(k))
    }

    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Lambda {
        Lambda {
            runtime_api: lookup(RUNTIME_API_VAR),
            function: FunctionInfo::from_vars(lookup),
        }
    }

    /// Lambda Managed Instances (`AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`),
    /// where registering for INVOKE fails init.
    pub fn managed_instances(&self) -> bool {
        self.function.initialization_type.as_deref() == Some("lambda-managed-instances")
    }

    /// `AWS_LAMBDA_RUNTIME_API` as the `lambda-extension` crate needs it (it panics on a
    /// missing or unparsable value): `host:port` (Lambda) or `http://host:port/prefix`
    /// (emulators).
    pub fn check_runtime_api(&self) -> Result<(), String> {
        let value = self
            .runtime_api
            .as_deref()
            .ok_or_else(|| "AWS_LAMBDA_RUNTIME_API is not set".to_string())?;
        let uri: http::Uri = value.parse().map_err(|e| {
            format!("AWS_LAMBDA_RUNTIME_API={value:?} is not valid: expected host:port or http://host:port/prefix ({e})")
        })?;
        match (uri.host(), uri.scheme_str()) {
            (Some(_), None | Some("http")) => Ok(()),
            _ => Err(format!(
                "AWS_LAMBDA_RUNTIME_API={value:?} is not valid: expected host:port or http://host:port/prefix"
            )),
        }
    }
}

/// Read here, with every other variable; `function` keeps the type and what it derives.
impl FunctionInfo {
    /// Reads the Lambda variables through `var`, so tests need no process environment.
    /// Missing, empty or unparsable values are left out rather than refused: they are
    /// Lambda's to set, not the user's.
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
            log_group: present("AWS_LAMBDA_LOG_GROUP_NAME"),
            initialization_type: present("AWS_LAMBDA_INITIALIZATION_TYPE"),
        }
    }
}
