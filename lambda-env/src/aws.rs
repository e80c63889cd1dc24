//! The made-up AWS account and region the environment runs in. The Extensions API names the
//! account to an extension that asks (`accountId`), the orchestrator puts both in the
//! function's ARN and the extension's `AWS_REGION`: one definition for both.

pub const ACCOUNT_ID: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// The unqualified ARN of the function `name` in [`ACCOUNT_ID`] and [`REGION`].
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_arn_names_account_and_region() {
        assert_eq!(
            function_arn("f"),
            "arn:aws:lambda:us-east-1:123456789012:function:f"
        );
    }
}
