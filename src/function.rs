//! The function being observed: what Lambda tells every extension about it (read from the
//! environment by `config::lambda`), and the semantic-convention attributes derived from that.

use opentelemetry::{Array, KeyValue, StringValue, Value};

/// A mebibyte: Lambda configures memory in MB, which are MiB.
const MIB: u64 = 1024 * 1024;

/// The function being observed, from the environment Lambda gives every extension.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionInfo {
    /// `AWS_LAMBDA_FUNCTION_NAME`: the invocation spans' name (`faas.name`).
    pub name: String,
    /// `AWS_LAMBDA_FUNCTION_VERSION` (`faas.version`): the version this environment runs,
    /// whatever alias it was invoked through.
    pub version: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION` (`cloud.region`).
    pub region: Option<String>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in MB (`faas.max_memory`, in bytes).
    pub memory_mb: Option<u64>,
    /// `AWS_LAMBDA_LOG_STREAM_NAME`: identifies the execution environment (`faas.instance`).
    pub log_stream: Option<String>,
    /// `AWS_LAMBDA_LOG_GROUP_NAME`: where the function's logs go (`aws.log.group.names`).
    pub log_group: Option<String>,
    /// `AWS_LAMBDA_INITIALIZATION_TYPE`: `on-demand`, `provisioned-concurrency`,
    /// `snap-start` or `lambda-managed-instances`; decides what counts as a cold start.
    pub initialization_type: Option<String>,
}

impl FunctionInfo {
    /// `faas.max_memory`: the configured memory in bytes.
    pub fn max_memory_bytes(&self) -> Option<i64> {
        i64::try_from(self.memory_mb?.checked_mul(MIB)?).ok()
    }

    /// Whether this environment's init phase is a cold start (`faas.coldstarts`): only an
    /// on-demand init is one. A provisioned-concurrency or Managed Instances init happens
    /// ahead of any request, and a `snap-start` init builds the snapshot at publish time
    /// (the restore is that environment's cold start). Unknown: on-demand, Lambda's default.
    pub fn init_is_cold_start(&self) -> bool {
        matches!(
            self.initialization_type.as_deref(),
            None | Some("on-demand")
        )
    }

    /// Whether this environment's first invocation is a cold one (`faas.coldstart`): it
    /// waited for an on-demand init or a SnapStart restore, the two cases
    /// [`Self::init_is_cold_start`] and every restore count.
    pub fn first_invocation_is_cold(&self) -> bool {
        self.init_is_cold_start() || self.initialization_type.as_deref() == Some("snap-start")
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
        // A string array in the conventions (an application may write to several groups).
        if let Some(group) = &self.log_group {
            let names = Array::String(vec![StringValue::from(group.clone())]);
            attributes.push(KeyValue::new("aws.log.group.names", Value::Array(names)));
        }
        attributes
    }

    /// `cloud.account.id` and `cloud.resource_id` of this function in `account` (the id
    /// register answers with), for the resource: its ARN is built as Lambda writes it, the
    /// partition told by the region (`aws-cn` for `cn-*`, `aws-us-gov` for `us-gov-*`).
    /// None without a region.
    pub fn account_attributes(&self, account: &str) -> Vec<KeyValue> {
        let Some(region) = &self.region else {
            return Vec::new();
        };
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        self.arn_attributes(&format!(
            "arn:{partition}:lambda:{region}:{account}:function:{}",
            self.name
        ))
    }

    /// `cloud.account.id` and `cloud.resource_id` from the ARN an INVOKE names
    /// (`arn:{partition}:lambda:{region}:{account}:function:{name}[:{qualifier}]`); none from
    /// a malformed one.
    ///
    /// The resource id is the function ARN qualified with the version this environment
    /// runs (`AWS_LAMBDA_FUNCTION_VERSION`): the conventions say not to use the invoked
    /// ARN as it is but to replace an alias with the resolved version, since one
    /// environment can be invoked through several aliases. Qualifying an unqualified ARN
    /// the same way keeps one id per environment however it was invoked. Without the
    /// version, an alias cannot be resolved, so no resource id is given.
    pub fn arn_attributes(&self, invoked_arn: &str) -> Vec<KeyValue> {
        let parts: Vec<&str> = invoked_arn.split(':').collect();
        let (base, qualifier) = match parts.as_slice() {
            [
                "arn",
                partition,
                "lambda",
                region,
                account,
                "function",
                name,
                rest @ ..,
            ] if rest.len() <= 1
                && [*partition, *region, *account, *name]
                    .iter()
                    .chain(rest)
                    .all(|part| !part.is_empty()) =>
            {
                let base = format!("arn:{partition}:lambda:{region}:{account}:function:{name}");
                (base, rest.first().copied())
            }
            _ => return Vec::new(),
        };
        let mut attributes = vec![KeyValue::new("cloud.account.id", parts[4].to_owned())];
        let is_version = |q: &str| q == "$LATEST" || q.bytes().all(|b| b.is_ascii_digit());
        let version = match (&self.version, qualifier) {
            (Some(version), _) => Some(version.as_str()),
            (None, Some(q)) if is_version(q) => Some(q),
            (None, Some(_alias)) => return attributes,
            (None, None) => None,
        };
        let resource_id = match version {
            Some(version) => format!("{base}:{version}"),
            None => base,
        };
        attributes.push(KeyValue::new("cloud.resource_id", resource_id));
        attributes
    }
}
