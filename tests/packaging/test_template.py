"""template.yaml: lint-clean for cfn-lint and SAM, and the security-relevant choices hold."""

import json
import subprocess

from conftest import ARCHES, ROOT, TEMPLATE, sam_env, tool


def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, env=sam_env(), capture_output=True, text=True, timeout=300)


def test_cfn_lint_has_no_finding():
    # Informational findings too (-c I): "no finding" means none at any level.
    r = run([tool("cfn-lint"), "--format", "json", "-c", "I", "--", str(TEMPLATE)])
    findings = json.loads(r.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert r.returncode == 0, r.stderr


def test_sam_validate_lint_passes_offline():
    r = run([tool("sam"), "validate", "--lint", "--template-file", str(TEMPLATE)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is a valid SAM Template" in r.stdout + r.stderr


def test_sam_transform_accepts_the_template_offline():
    # Plain `sam validate` runs the SAM translator (the Serverless transform) locally.
    r = run([tool("sam"), "validate", "--template-file", str(TEMPLATE)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is a valid SAM Template" in r.stdout + r.stderr


def test_a_layer_per_architecture_from_the_dist_zips(template):
    layers = {
        name: res["Properties"]
        for name, res in template["Resources"].items()
        if res["Type"] == "AWS::Serverless::LayerVersion"
    }
    by_arch = {p["CompatibleArchitectures"][0]: p for p in layers.values()}
    assert sorted(by_arch) == sorted(ARCHES)
    for arch, props in by_arch.items():
        assert props["CompatibleArchitectures"] == [arch]
        assert props["ContentUri"] == f"dist/lambda-sidecar-{arch}.zip"
        for runtime in ("nodejs22.x", "python3.13", "provided.al2023", "java21"):
            assert runtime in props["CompatibleRuntimes"], (arch, runtime)


def test_example_function_runs_on_arm64_with_the_arm64_layer(template):
    fn = template["Resources"]["ExampleFunction"]["Properties"]
    assert fn["Runtime"] == "nodejs22.x"
    assert fn["Architectures"] == ["arm64"]
    layer = fn["Layers"][0]["Ref"]
    assert template["Resources"][layer]["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert fn["FunctionUrlConfig"] == {"AuthType": {"Ref": "FunctionUrlAuthType"}}


def test_function_url_is_iam_protected_by_default(template):
    p = template["Parameters"]["FunctionUrlAuthType"]
    assert p["Default"] == "AWS_IAM"
    assert sorted(p["AllowedValues"]) == ["AWS_IAM", "NONE"]


def test_the_signing_key_is_read_by_the_sidecar_not_put_in_the_environment(template):
    env = template["Resources"]["ExampleFunction"]["Properties"]["Environment"]["Variables"]
    # The sidecar fetches it at init with the function's role (test_template_translated.py
    # checks the role's grants per source); no key, nor a dynamic reference to one.
    assert "JWT_KEY_SOURCE" in env
    assert "JWT_SECRET" not in env and "JWT_PRIVATE_KEY" not in env
    assert template["Parameters"]["JwtKeySource"]["Default"] == "secretsmanager"
    # No key material anywhere in the template text.
    text = TEMPLATE.read_text()
    assert "PRIVATE KEY-----" not in text


def test_otlp_settings_are_parameters_and_headers_come_from_a_secret(template):
    params = template["Parameters"]
    env = template["Resources"]["ExampleFunction"]["Properties"]["Environment"]["Variables"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["Fn::If"][1] == {"Ref": "OtlpEndpoint"}
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["Fn::If"][1] == {
        "Fn::Sub": "{{resolve:secretsmanager:${OtlpHeadersSecretArn}:SecretString}}"
    }
    assert "OtlpHeaders" not in params
    assert env["SIDECAR_FLUSH_TIMEOUT_MS"] == {"Ref": "FlushTimeoutMs"}
    assert env["JWT_ALGORITHM"] == {"Ref": "JwtAlgorithm"}


def test_outputs_give_the_url_and_both_layer_arns(template):
    out = template["Outputs"]
    assert out["FunctionUrl"]["Value"] == {"Fn::GetAtt": "ExampleFunctionUrl.FunctionUrl"}
    assert out["SidecarLayerArm64Arn"]["Value"] == {"Ref": "SidecarLayerArm64"}
    assert out["SidecarLayerX8664Arn"]["Value"] == {"Ref": "SidecarLayerX8664"}


def test_jwks_publishing_is_optional_and_exposes_only_the_two_documents(template):
    res = template["Resources"]
    assert template["Parameters"]["PublishJwks"]["Default"] == "false"
    for name in ("JwksBucket", "JwksBucketPolicy"):
        assert res[name]["Condition"] == "PublishesJwks", name
    block = res["JwksBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    assert block["BlockPublicAcls"] and block["IgnorePublicAcls"]
    allows = [
        s for s in res["JwksBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Allow"
    ]
    assert len(allows) == 1 and allows[0]["Principal"] == "*"
    assert allows[0]["Action"] == "s3:GetObject"
    assert allows[0]["Resource"] == [
        {"Fn::Sub": "${JwksBucket.Arn}/.well-known/jwks.json"},
        {"Fn::Sub": "${JwksBucket.Arn}/.well-known/openid-configuration"},
    ]
    # The function's issuer is the URL API Gateway is given (<issuer>/.well-known/...), and
    # its JWKS URL the object make publish-jwks writes.
    env = res["ExampleFunction"]["Properties"]["Environment"]["Variables"]
    issuer = template["Outputs"]["JwtIssuerUrl"]["Value"]
    assert env["JWT_ISSUER"] == {"Fn::If": ["PublishesJwks", issuer, {"Ref": "JwtIssuer"}]}
    jwks = template["Outputs"]["JwksUri"]["Value"]
    assert jwks == {"Fn::Sub": issuer["Fn::Sub"] + "/.well-known/jwks.json"}
    assert env["JWT_JWKS_URI"] == {"Fn::If": ["PublishesJwks", jwks, {"Ref": "AWS::NoValue"}]}
    # An HMAC secret is never published: the parameters are refused before anything is made.
    rule = template["Rules"]["PublishingNeedsAPublicKey"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "PublishJwks"}, "true"]}
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Contains": [["HS256", "HS384", "HS512"], {"Ref": "JwtAlgorithm"}]}]
    }


def test_the_example_jwt_authorizer_trusts_the_published_issuer(template):
    res = template["Resources"]
    made = {name for name, r in res.items() if r.get("Condition") == "HasJwtProtectedApi"}
    assert made == {
        "JwtProtectedApi", "JwtAuthorizer", "JwtProtectedIntegration", "JwtProtectedRoute",
        "JwtProtectedStage", "JwtProtectedApiPermission",
    }
    # Only with RS256 (API Gateway verifies RSA signatures only) and an audience.
    cond = template["Conditions"]["HasJwtProtectedApi"]["Fn::And"]
    assert {"Fn::Equals": [{"Ref": "JwtAlgorithm"}, "RS256"]} in cond
    assert {"Condition": "HasAudience"} in cond and {"Condition": "PublishesJwks"} in cond
    jwt = res["JwtAuthorizer"]["Properties"]
    assert jwt["AuthorizerType"] == "JWT"
    assert jwt["JwtConfiguration"]["Issuer"] == template["Outputs"]["JwtIssuerUrl"]["Value"]
    assert jwt["JwtConfiguration"]["Audience"] == [
        {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "JwtAudience"}]}]}
    ]
    route = res["JwtProtectedRoute"]["Properties"]
    assert route["AuthorizationType"] == "JWT"
    assert route["AuthorizerId"] == {"Ref": "JwtAuthorizer"}


def test_aws_native_export_sets_the_endpoints_and_only_their_permissions(template):
    # Issue 22: off by default; on, the traces and metrics endpoints of the stack's region
    # (signed by the sidecar, SIDECAR_OTLP_SIGV4=auto) and the actions they authorize.
    param = template["Parameters"]["AwsNativeExport"]
    assert param["Default"] == "false"
    assert template["Conditions"]["UsesAwsNativeExport"] == {
        "Fn::Equals": [{"Ref": "AwsNativeExport"}, "true"]
    }
    env = template["Resources"]["ExampleFunction"]["Properties"]["Environment"]["Variables"]
    for var, host, path in [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "xray", "traces"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "monitoring", "metrics"),
    ]:
        condition, value, otherwise = env[var]["Fn::If"]
        assert condition == "UsesAwsNativeExport"
        assert value == {"Fn::Sub": f"https://{host}.${{AWS::Region}}.${{AWS::URLSuffix}}/v1/{path}"}
        assert otherwise == {"Ref": "AWS::NoValue"}
    assert "SIDECAR_OTLP_SIGV4" not in env, "auto, the default, signs amazonaws.com hosts"
    policy = template["Resources"]["AwsNativeExportPolicy"]
    assert policy["Condition"] == "UsesAwsNativeExport"
    assert policy["Properties"]["Roles"] == [{"Ref": "ExampleFunctionRole"}]
    actions = sorted(
        action
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    )
    assert actions == ["cloudwatch:PutMetricData", "xray:PutSpans", "xray:PutSpansForIndexing"]
    assert all(
        s["Effect"] == "Allow" for s in policy["Properties"]["PolicyDocument"]["Statement"]
    )
